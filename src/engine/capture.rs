//! Activation capture for importance matrices: while the model runs, the sum over tokens
//! of each input column's squared activation, and the token count, for every weight
//! matrix a forward pass multiplies, as `llama-imatrix` collects them.
//!
//! What is collected follows llama.cpp's `tools/imatrix/imatrix.cpp`: every matrix
//! product of a decoder layer (`blk.N.*`), named by its GGUF tensor name whatever the
//! checkpoint's naming, since the file is read by `convert --imatrix` and `llama-quantize`
//! against GGUF names; not the output head (llama-imatrix skips it unless asked with
//! `--process-output`) and not the token embedding (a lookup, not a product). q, k and v
//! are three products of the same input, so three entries with the same sums (one
//! `attn_qkv` entry when the checkpoint fuses them, as Phi-3 does). A stacked expert
//! tensor (`ffn_*_exps`) has one slice of sums and one count per expert: a token counts
//! for each expert it is routed to, and the router (`ffn_gate_inp`) and shared experts are
//! dense entries. DeepSeek's latent-attention projections are not captured yet.
//!
//! Each call's sums are taken in f64 and added to f32 totals (llama.cpp adds every
//! token's square to f32 totals), so the totals are at least as exact as llama.cpp's and
//! take its memory. A non-finite total is an error (llama-imatrix aborts there too).
//!
//! The hook costs nothing when no capture is installed: the forward pass holds an
//! `Option<&Capture>` and the layer code calls its `LayerTap` only when it is `Some`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{DType as CDType, Tensor};

use super::EngineError;
use crate::formats::imatrix::Entry;

/// Sums of one weight matrix.
#[derive(Debug)]
struct Sums {
    columns: usize,
    /// `counts.len()` slices of `columns` totals.
    sums: Vec<f32>,
    counts: Vec<u64>,
}

/// The collector: entries by GGUF tensor name. Shared by reference with the forward pass;
/// the lock is uncontended (one forward pass at a time) and taken once per product.
#[derive(Debug, Default)]
pub struct Capture {
    entries: Mutex<BTreeMap<String, Sums>>,
}

impl Capture {
    pub fn new() -> Capture {
        Capture::default()
    }

    /// Add `rows` rows of `x` (row-major, `x.len() / rows` columns) to slice `slice` of
    /// `slices` of entry `name`.
    fn add(
        &self,
        name: &str,
        slices: usize,
        slice: usize,
        x: &[f32],
        rows: usize,
    ) -> Result<(), EngineError> {
        if rows == 0 {
            return Ok(());
        }
        let columns = x.len() / rows;
        if columns * rows != x.len() || slice >= slices {
            return Err(EngineError::BadParam(format!(
                "activations of `{name}`: {} values do not make {rows} rows",
                x.len()
            )));
        }
        let mut acc = vec![0f64; columns];
        for row in x.chunks_exact(columns) {
            for (a, &v) in acc.iter_mut().zip(row) {
                let v = f64::from(v);
                *a += v * v;
            }
        }
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| EngineError::BadParam("the activation capture was poisoned".into()))?;
        let e = entries.entry(name.to_owned()).or_insert_with(|| Sums {
            columns,
            sums: vec![0.0; columns * slices],
            counts: vec![0; slices],
        });
        if e.columns != columns || e.counts.len() != slices {
            return Err(EngineError::BadParam(format!(
                "activations of `{name}`: {slices} x {columns} values, earlier {} x {}",
                e.counts.len(),
                e.columns
            )));
        }
        let dst = &mut e.sums[slice * columns..(slice + 1) * columns];
        for (d, a) in dst.iter_mut().zip(&acc) {
            *d = (f64::from(*d) + a) as f32;
        }
        e.counts[slice] += rows as u64;
        Ok(())
    }

    /// The collected entries, leaving the collector empty. A non-finite total is an error
    /// naming the tensor.
    pub fn take(&self) -> Result<BTreeMap<String, Entry>, EngineError> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| EngineError::BadParam("the activation capture was poisoned".into()))?;
        let taken = std::mem::take(&mut *entries);
        let mut out = BTreeMap::new();
        for (name, s) in taken {
            if s.sums.iter().any(|v| !v.is_finite()) {
                return Err(EngineError::BadTensor {
                    name,
                    why: "the squared activations entering it sum to infinity or NaN".into(),
                });
            }
            out.insert(
                name,
                Entry {
                    columns: s.columns,
                    sums: s.sums,
                    counts: s.counts,
                },
            );
        }
        Ok(out)
    }

    /// The hook for decoder layer `layer`.
    pub(super) fn layer(&self, layer: usize) -> LayerTap<'_> {
        LayerTap { cap: self, layer }
    }
}

/// The capture seen from one decoder layer: products named by their GGUF suffix
/// (`attn_q`, `ffn_down_exps`), `blk.N.` and `.weight` added here.
pub(super) struct LayerTap<'a> {
    cap: &'a Capture,
    layer: usize,
}

impl LayerTap<'_> {
    fn name(&self, short: &str) -> String {
        format!("blk.{}.{short}.weight", self.layer)
    }

    /// `x` `[n, columns]` enters each of the dense products `shorts`.
    pub(super) fn dense(&self, shorts: &[&str], x: &Tensor) -> Result<(), EngineError> {
        let x = x.to_dtype(CDType::F32)?;
        let rows = x.dim(0)?;
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        self.dense_rows(shorts, &values, rows)
    }

    /// `rows` rows of `x` enter each of the dense products `shorts`.
    pub(super) fn dense_rows(
        &self,
        shorts: &[&str],
        x: &[f32],
        rows: usize,
    ) -> Result<(), EngineError> {
        for s in shorts {
            self.cap.add(&self.name(s), 1, 0, x, rows)?;
        }
        Ok(())
    }

    /// `rows` rows of `x`, the tokens routed to expert `expert` of `experts`, enter that
    /// expert's slice of each stacked product `shorts`.
    pub(super) fn expert_rows(
        &self,
        shorts: &[&str],
        experts: usize,
        expert: usize,
        x: &[f32],
        rows: usize,
    ) -> Result<(), EngineError> {
        for s in shorts {
            self.cap.add(&self.name(s), experts, expert, x, rows)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sums_squares_per_column_and_counts_rows() {
        let c = Capture::new();
        let t = c.layer(3);
        let x = Tensor::new(&[[1f32, -2.0], [3.0, 0.5]], &Device::Cpu).unwrap();
        t.dense(&["attn_q", "attn_k"], &x).unwrap();
        t.dense_rows(&["attn_q"], &[2.0, 0.0], 1).unwrap();
        t.expert_rows(&["ffn_up_exps"], 3, 2, &[1.0, 2.0, 3.0], 1)
            .unwrap();
        let e = c.take().unwrap();
        let q = &e["blk.3.attn_q.weight"];
        assert_eq!(
            (q.columns, &q.sums[..], &q.counts[..]),
            (2, &[14.0, 4.25][..], &[3][..])
        );
        let k = &e["blk.3.attn_k.weight"];
        assert_eq!((&k.sums[..], &k.counts[..]), (&[10.0, 4.25][..], &[2][..]));
        let x = &e["blk.3.ffn_up_exps.weight"];
        assert_eq!(x.columns, 3);
        assert_eq!(x.sums, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 4.0, 9.0]);
        assert_eq!(x.counts, [0, 0, 1]);
        assert!(c.take().unwrap().is_empty());
    }

    #[test]
    fn inconsistent_widths_and_non_finite_sums_are_errors() {
        let c = Capture::new();
        let t = c.layer(0);
        t.dense_rows(&["ffn_down"], &[1.0, 2.0], 1).unwrap();
        assert!(t.dense_rows(&["ffn_down"], &[1.0, 2.0, 3.0], 1).is_err());
        assert!(t.dense_rows(&["ffn_down"], &[1.0, 2.0, 3.0], 2).is_err());
        t.dense_rows(&["ffn_down"], &[f32::INFINITY, 0.0], 1)
            .unwrap();
        let e = c.take().unwrap_err();
        assert!(e.to_string().contains("blk.0.ffn_down.weight"), "{e}");
    }
}
