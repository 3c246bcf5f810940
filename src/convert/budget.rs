//! Size-budget mixes (`convert --target-bpw B`, `--max-size BYTES`): the convert stage's
//! half of choosing one type per tensor so that the file fits a budget and the model
//! drifts as little as possible.
//!
//! This half needs no engine: it lists each quantizable tensor's candidate types (every
//! quantized type modelgate writes whose blocks divide the tensor's rows, and F16),
//! measures for each the importance-weighted squared quantization error
//! `sum_rows sum_j imp_j (w_j - q(w)_j)^2` (uniform importance without `--imatrix`; the
//! quantizers run exactly as the conversion will run them), picks types under a byte budget
//! given a per-tensor factor turning that error into predicted KLD ([`select`]), and turns
//! the pick into ordinary conversion options ([`options_for`]). The factors come from the
//! engine; `pipeline::budget` measures them, since a stage never runs another stage.
//!
//! Candidate types come from [`quant::SUPPORTED`] filtered by [`recipe::writable`], so a
//! type joins as soon as its quantizer does. Left out: MXFP4 (llama.cpp writes it only for
//! expert tensors of `MXFP4_MOE`), TQ1_0/TQ2_0 (ternary, for models trained ternary) and,
//! without an importance matrix, the types llama.cpp refuses to write without one.
//! Tensors llama.cpp never quantizes (norms, routers, 1-D tensors) keep the type the recipe
//! gives them and count as fixed bytes.

use std::collections::BTreeMap;
use std::time::Instant;

use rayon::prelude::*;
use regex::Regex;
use serde::Serialize;

use super::plan::{Plan, Planned, Source};
use super::{elem, exec, quant, recipe, ConvertError, FileType, Options, OutputFormat};
use crate::formats::{Checkpoint, GgmlType, Weights};

/// How large the output may be.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Budget {
    /// Tensor data bits per parameter, as `convert` reports `bits/weight`.
    Bpw(f64),
    /// Bytes of the whole output file.
    Bytes(u64),
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Bpw(b) => write!(f, "--target-bpw {b}"),
            Budget::Bytes(n) => write!(f, "--max-size {n}"),
        }
    }
}

/// Parse a size such as `800M`, `4.5G`, `1.5GiB` or `123456789` (K, M, G, T are powers of
/// 1000 as in llama.cpp's tools; KiB, MiB, GiB, TiB powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, ConvertError> {
    let bad = || {
        ConvertError::Options(format!(
            "--max-size `{s}` is not a size such as 800M, 4.5G or 123456789"
        ))
    };
    let t = s.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = (n * mult).floor();
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// The types a tensor may get, cheapest first: every quantized type modelgate writes
/// (without an importance matrix, those llama.cpp writes without one), then F16.
pub fn candidate_types(has_imatrix: bool) -> Vec<GgmlType> {
    let mut v: Vec<GgmlType> = quant::SUPPORTED
        .iter()
        .copied()
        .filter(|&t| {
            t.is_quantized()
                && recipe::writable(t)
                && !matches!(t, GgmlType::MXFP4 | GgmlType::TQ1_0 | GgmlType::TQ2_0)
                // Any ordinary tensor name: the exemption for the embedding and head is
                // handled per tensor in `table`.
                && (has_imatrix || !recipe::requires_imatrix("blk.0.ffn_up.weight", t))
        })
        .collect();
    v.push(GgmlType::F16);
    v.sort_by(|a, b| bits(*a).total_cmp(&bits(*b)).then(a.id().cmp(&b.id())));
    v
}

/// Bits per value of a type (its block bytes over block values).
fn bits(t: GgmlType) -> f64 {
    t.block()
        .map_or(32.0, |(n, b)| b as f64 * 8.0 / n.max(1) as f64)
}

/// One type a tensor may get, with what it costs and how much it loses.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    #[serde(serialize_with = "ser_type")]
    pub ty: GgmlType,
    pub bytes: u64,
    /// `sum imp_j (w_j - q(w)_j)^2` over the tensor.
    pub error: f64,
}

fn ser_type<S: serde::Serializer>(t: &GgmlType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

/// A tensor whose type the budget chooses.
#[derive(Clone, Debug, Serialize)]
pub struct Choosable {
    /// Index into the plan's tensors.
    pub index: usize,
    pub name: String,
    pub params: u64,
    /// Cheapest first.
    pub candidates: Vec<Candidate>,
}

/// Every choosable tensor's candidates, and what the rest of the file takes.
#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub tensors: Vec<Choosable>,
    /// Tensor bytes of the tensors whose type is fixed (norms, routers, ...).
    pub fixed_bytes: u64,
    /// Parameters of the whole model (choosable and fixed).
    pub params: u64,
    /// Time spent quantizing every candidate.
    pub seconds: f64,
}

impl Table {
    /// Smallest and largest tensor bytes any choice gives.
    pub fn range(&self) -> (u64, u64) {
        let lo: u64 = self
            .tensors
            .iter()
            .filter_map(|t| t.candidates.iter().map(|c| c.bytes).min())
            .sum();
        let hi: u64 = self
            .tensors
            .iter()
            .filter_map(|t| t.candidates.iter().map(|c| c.bytes).max())
            .sum();
        (self.fixed_bytes + lo, self.fixed_bytes + hi)
    }

    /// Bits per weight of `bytes` of tensor data.
    pub fn bpw(&self, bytes: u64) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / self.params as f64
        }
    }

    /// The tensor-data bytes a bits-per-weight budget allows, or an error naming the
    /// achievable range when it is outside it.
    pub fn bytes_for_bpw(&self, bpw: f64) -> Result<u64, ConvertError> {
        let (lo, hi) = self.range();
        let (min, max) = (self.bpw(lo), self.bpw(hi));
        // Rounded as printed, so that the printed extremes are accepted.
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        if !bpw.is_finite() || bpw < r(min) - 1e-9 || bpw > r(max) + 1e-9 {
            return Err(ConvertError::BudgetOutOfRange {
                asked: format!("--target-bpw {bpw}"),
                min: format!("{:.3} bits per weight", r(min)),
                max: format!("{:.3} bits per weight (F16)", r(max)),
            });
        }
        let want = (bpw * self.params as f64 / 8.0).floor() as u64;
        Ok(want.clamp(lo, hi))
    }
}

/// The plan every candidate is measured against: the conversion `opts` asks for with every
/// quantizable tensor at Q8_0 (`--pure`), which tells the quantizable tensors (Q8_0, or
/// F16 where rows do not divide into blocks of 32) from the fixed ones; and each tensor's
/// importance.
pub fn base_plan(
    ckpt: &Checkpoint,
    opts: &Options,
) -> Result<(Plan, exec::Importance), ConvertError> {
    let mut o = opts.clone();
    o.file_type = Some(FileType::Q8_0);
    o.recipe.pure = true;
    o.recipe.tensor_types.clear();
    o.recipe.output_tensor_type = None;
    o.recipe.token_embedding_type = None;
    let o = super::effective(&o)?;
    let plan = super::plan::plan(ckpt, &o, OutputFormat::Gguf)?;
    let importance = super::importance_for(&plan, &o)?;
    Ok((plan, importance))
}

/// A planned tensor's values as the conversion would quantize them (output row order).
pub fn planned_values(t: &Planned, weights: &Weights) -> Result<Vec<f32>, ConvertError> {
    let kernel = |fault: String| ConvertError::Kernel {
        tensor: t.name.clone(),
        fault,
    };
    let row_len = t.row_len();
    let rows = t.n_rows();
    let n = usize::try_from(t.elements()).map_err(|_| kernel("tensor too large".into()))?;
    let mut f = vec![0f32; n];
    match &t.source {
        Source::Values(v) => {
            f.copy_from_slice(
                v.get(..n)
                    .ok_or_else(|| kernel("computed values too short".into()))?,
            );
        }
        Source::Gather(g) => g.fill(weights, 0, rows, row_len, &mut f).map_err(kernel)?,
        Source::Tensor(i) => {
            let info = weights
                .tensors
                .get(*i)
                .ok_or_else(|| kernel("source tensor vanished".into()))?;
            let data = weights.tensor_data(info)?;
            let row_bytes = info
                .dtype
                .bytes_for(row_len)
                .ok_or_else(|| kernel(format!("rows are not whole {} blocks", info.dtype)))?
                as usize;
            for (r, dst) in f.chunks_exact_mut(row_len as usize).enumerate() {
                let s = t.rows.source_row(r as u64) as usize * row_bytes;
                let src = data
                    .get(s..s + row_bytes)
                    .ok_or_else(|| kernel("row lies outside the tensor".into()))?;
                elem::decode(info.dtype, src, dst).map_err(kernel)?;
            }
        }
    }
    Ok(f)
}

/// `sum_j imp_j (x_j - y_j)^2` over rows of `row_len`, the importance cycling per matrix
/// (a stacked tensor has one importance slice per matrix). Summed in f64 in a fixed
/// order, so the result does not depend on the number of threads.
fn weighted_error(x: &[f32], y: &[f32], row_len: usize, rows_per_slice: usize, imp: &[f32]) -> f64 {
    let rows: Vec<f64> = x
        .par_chunks(row_len)
        .zip(y.par_chunks(row_len))
        .enumerate()
        .map(|(r, (a, b))| {
            let slice = r / rows_per_slice.max(1);
            let w = imp.get(slice * row_len..(slice + 1) * row_len);
            a.iter()
                .zip(b)
                .enumerate()
                .map(|(j, (p, q))| {
                    let d = f64::from(p - q);
                    let wj = w.map_or(1.0, |w| f64::from(w[j]));
                    wj * d * d
                })
                .sum::<f64>()
        })
        .collect();
    rows.iter().sum()
}

/// Events of [`table`]: tensor `done` of `total` measured.
pub type TableProgress<'a> = &'a mut dyn FnMut(usize, usize);

/// Quantize every choosable tensor of `plan` to each of `types` that fits its rows and
/// measure the weighted error. Runs on the rayon pool the caller is in.
pub fn table(
    plan: &Plan,
    weights: &Weights,
    importance: &exec::Importance,
    types: &[GgmlType],
    progress: TableProgress<'_>,
) -> Result<Table, ConvertError> {
    let started = Instant::now();
    let mut tensors = Vec::new();
    let mut fixed_bytes = 0;
    let choosable: Vec<usize> = plan
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.ty.is_quantized() && t.shift == 0.0)
        .map(|(i, _)| i)
        .collect();
    for t in plan
        .tensors
        .iter()
        .enumerate()
        .filter(|(i, _)| !choosable.contains(i))
    {
        fixed_bytes += t.1.bytes;
    }
    for (done, &i) in choosable.iter().enumerate() {
        let t = &plan.tensors[i];
        let row_len = t.row_len() as usize;
        let values = planned_values(t, weights)?;
        let imp = importance.get(&t.name).map(Vec::as_slice);
        let rows_per_slice = if t.shape.len() >= 3 {
            t.shape[t.shape.len() - 2] as usize
        } else {
            t.n_rows() as usize
        };
        let mut candidates = Vec::new();
        for &ty in types {
            if !quant::row_fits(ty, row_len) {
                continue;
            }
            if imp.is_none() && recipe::requires_imatrix(&t.name, ty) {
                continue;
            }
            let kernel = |e: quant::QuantError| ConvertError::Kernel {
                tensor: t.name.clone(),
                fault: e.to_string(),
            };
            // Quantized slice by slice with that slice's importance, as the writer does.
            let mut bytes = Vec::new();
            let per = rows_per_slice.max(1) * row_len;
            for (s, chunk) in values.chunks(per).enumerate() {
                let w = imp.and_then(|v| v.get(s * row_len..(s + 1) * row_len));
                quant::quantize_rows_weighted(ty, chunk, row_len, w, &mut bytes).map_err(kernel)?;
            }
            let back = quant::dequantize_to_vec(ty, &bytes).map_err(kernel)?;
            let error = weighted_error(&values, &back, row_len, rows_per_slice, imp.unwrap_or(&[]));
            candidates.push(Candidate {
                ty,
                bytes: bytes.len() as u64,
                error,
            });
        }
        candidates.sort_by(|a, b| a.bytes.cmp(&b.bytes).then(a.ty.id().cmp(&b.ty.id())));
        tensors.push(Choosable {
            index: i,
            name: t.name.clone(),
            params: t.elements(),
            candidates,
        });
        progress(done + 1, choosable.len());
    }
    Ok(Table {
        tensors,
        fixed_bytes,
        params: plan.tensors.iter().map(Planned::elements).sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The chosen candidate (index into its `candidates`) of every choosable tensor.
pub type Choice = Vec<usize>;

/// Minimise `sum_t factor_t * error_t(type)` subject to total tensor bytes at most
/// `budget` (which includes the fixed bytes). Each tensor's candidates are reduced to their
/// lower convex hull in (bytes, predicted loss); starting from every tensor's cheapest
/// candidate, the upgrade with the largest loss saved per byte is taken while it fits
/// (the Lagrangian solution at every hull corner), then leftover bytes go to the single
/// upgrades, on or off the hull, that save the most. Ties go to the earlier tensor, so the
/// result is deterministic.
pub fn select(table: &Table, factors: &[f64], budget: u64) -> Choice {
    let loss = |t: usize, c: usize| factors[t].max(0.0) * table.tensors[t].candidates[c].error;
    let n = table.tensors.len();
    // Each tensor's hull, as candidate indices of increasing bytes and decreasing loss.
    let hulls: Vec<Vec<usize>> = (0..n)
        .map(|t| {
            let cs = &table.tensors[t].candidates;
            let mut h: Vec<usize> = Vec::new();
            for c in 0..cs.len() {
                // Dominated: no cheaper, and no better than something already on the hull.
                if h.last().is_some_and(|&p| loss(t, c) >= loss(t, p)) {
                    continue;
                }
                while h.len() >= 2 {
                    let (a, b) = (h[h.len() - 2], h[h.len() - 1]);
                    let slope = |i: usize, j: usize| {
                        (loss(t, i) - loss(t, j)) / (cs[j].bytes - cs[i].bytes).max(1) as f64
                    };
                    // b is above the segment a-c: drop it.
                    if slope(a, b) <= slope(b, c) {
                        h.pop();
                    } else {
                        break;
                    }
                }
                h.push(c);
            }
            h
        })
        .collect();
    let mut pos = vec![0usize; n];
    let mut choice: Choice = hulls
        .iter()
        .map(|h| h.first().copied().unwrap_or(0))
        .collect();
    let mut used: u64 = table.fixed_bytes
        + (0..n)
            .map(|t| {
                table.tensors[t]
                    .candidates
                    .get(choice[t])
                    .map_or(0, |c| c.bytes)
            })
            .sum::<u64>();
    let cs = |t: usize, c: usize| &table.tensors[t].candidates[c];
    loop {
        let mut best: Option<(f64, usize)> = None;
        for t in 0..n {
            let Some(&next) = hulls[t].get(pos[t] + 1) else {
                continue;
            };
            let cur = choice[t];
            let extra = cs(t, next).bytes.saturating_sub(cs(t, cur).bytes);
            if used + extra > budget {
                continue;
            }
            let gain = (loss(t, cur) - loss(t, next)) / extra.max(1) as f64;
            if best.is_none_or(|(g, _)| gain > g) {
                best = Some((gain, t));
            }
        }
        let Some((_, t)) = best else { break };
        let next = hulls[t][pos[t] + 1];
        used = used + cs(t, next).bytes - cs(t, choice[t]).bytes;
        choice[t] = next;
        pos[t] += 1;
    }
    // Leftover bytes: any single change that fits and lowers the loss most.
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for t in 0..n {
            let cur = choice[t];
            for c in 0..table.tensors[t].candidates.len() {
                let (b0, b1) = (cs(t, cur).bytes, cs(t, c).bytes);
                if b1 <= b0 || used + (b1 - b0) > budget {
                    continue;
                }
                let gain = loss(t, cur) - loss(t, c);
                if gain > 0.0 && best.is_none_or(|(g, _, _)| gain > g) {
                    best = Some((gain, t, c));
                }
            }
        }
        let Some((_, t, c)) = best else { break };
        used = used + cs(t, c).bytes - cs(t, choice[t]).bytes;
        choice[t] = c;
    }
    choice
}

/// Tensor bytes of a choice, fixed tensors included.
pub fn bytes_of(table: &Table, choice: &Choice) -> u64 {
    table.fixed_bytes
        + table
            .tensors
            .iter()
            .zip(choice)
            .map(|(t, &c)| t.candidates.get(c).map_or(0, |c| c.bytes))
            .sum::<u64>()
}

/// The `general.file_type` a budget mix is written with: what llama.cpp's loader would
/// guess for it, the target whose main type holds the most parameters (Q4_K means
/// Q4_K_M, as in llama.cpp); F16 when nothing is quantized.
pub fn file_type_of(table: &Table, choice: &Choice) -> FileType {
    let mut by_type: BTreeMap<u32, (u64, GgmlType)> = BTreeMap::new();
    for (t, &c) in table.tensors.iter().zip(choice) {
        if let Some(c) = t.candidates.get(c) {
            if c.ty.is_quantized() {
                by_type.entry(c.ty.id()).or_insert((0, c.ty)).0 += t.params;
            }
        }
    }
    let Some((_, ty)) = by_type
        .values()
        .copied()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.id().cmp(&a.1.id())))
    else {
        return FileType::F16;
    };
    let targets: Vec<FileType> = FileType::names()
        .into_iter()
        .filter_map(FileType::parse)
        .filter(|f| f.default_type() == ty)
        .collect();
    targets
        .iter()
        .copied()
        .find(|f| f.name().ends_with("_M"))
        .or_else(|| targets.first().copied())
        .unwrap_or(FileType::F16)
}

/// Conversion options that write exactly this choice: the guessed file type, and one
/// `--tensor-type` rule per choosable tensor naming its type.
pub fn options_for(
    opts: &Options,
    table: &Table,
    choice: &Choice,
) -> Result<Options, ConvertError> {
    let mut o = opts.clone();
    o.file_type = Some(file_type_of(table, choice));
    o.recipe.pure = true;
    o.recipe.output_tensor_type = None;
    o.recipe.token_embedding_type = None;
    o.recipe.tensor_types = table
        .tensors
        .iter()
        .zip(choice)
        .filter_map(|(t, &c)| t.candidates.get(c).map(|c| (t, c.ty)))
        .map(|(t, ty)| {
            let re = Regex::new(&format!("^{}$", regex::escape(&t.name)))
                .map_err(|e| ConvertError::Options(format!("tensor name `{}`: {e}", t.name)))?;
            Ok((re, ty))
        })
        .collect::<Result<_, ConvertError>>()?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(ty: GgmlType, bytes: u64, error: f64) -> Candidate {
        Candidate { ty, bytes, error }
    }

    fn toy() -> Table {
        use GgmlType as G;
        let t = |i: usize, scale: f64| Choosable {
            index: i,
            name: format!("blk.{i}.ffn_up.weight"),
            params: 100,
            candidates: vec![
                cand(G::Q4_0, 50, 10.0 * scale),
                cand(G::Q5_0, 60, 4.0 * scale),
                cand(G::Q8_0, 90, 0.5 * scale),
                cand(G::F16, 200, 0.0),
            ],
        };
        Table {
            tensors: vec![t(0, 1.0), t(1, 3.0), t(2, 0.1)],
            fixed_bytes: 10,
            params: 300,
            seconds: 0.0,
        }
    }

    #[test]
    fn sizes_parse_with_units_and_decimals() {
        assert_eq!(parse_size("800M").unwrap(), 800_000_000);
        assert_eq!(parse_size("4.5G").unwrap(), 4_500_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("x").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("5Q").is_err());
    }

    #[test]
    fn selection_respects_the_budget_and_spends_where_it_saves_most() {
        let table = toy();
        let factors = [1.0, 1.0, 1.0];
        let (lo, hi) = table.range();
        assert_eq!((lo, hi), (160, 610));
        for budget in [160, 170, 200, 250, 300, 400, 610] {
            let c = select(&table, &factors, budget);
            assert!(bytes_of(&table, &c) <= budget, "{budget}");
            assert_eq!(c, select(&table, &factors, budget));
        }
        // 10 spare bytes go to the most sensitive tensor.
        assert_eq!(select(&table, &factors, 170), vec![0, 1, 0]);
        assert_eq!(select(&table, &factors, 610), vec![3, 3, 3]);
        // More bytes never predict more loss.
        let loss = |c: &Choice| -> f64 {
            c.iter()
                .enumerate()
                .map(|(t, &k)| table.tensors[t].candidates[k].error)
                .sum()
        };
        let mut last = f64::INFINITY;
        for budget in (160..=610).step_by(10) {
            let l = loss(&select(&table, &factors, budget));
            assert!(l <= last + 1e-12, "{budget}");
            last = l;
        }
    }

    #[test]
    fn bpw_outside_the_range_is_refused_with_the_range() {
        let table = toy();
        let err = table.bytes_for_bpw(1.0).unwrap_err().to_string();
        assert!(err.contains("4.267"), "{err}");
        assert!(err.contains("16.267"), "{err}");
        assert!(table.bytes_for_bpw(17.0).is_err());
        assert_eq!(table.bytes_for_bpw(16.267).unwrap(), 610);
        assert_eq!(table.bytes_for_bpw(8.0).unwrap(), 300);
    }

    #[test]
    fn candidates_are_cheapest_first_and_end_with_f16() {
        let c = candidate_types(false);
        assert_eq!(c.last(), Some(&GgmlType::F16));
        assert!(c.contains(&GgmlType::Q4K));
        assert!(!c.contains(&GgmlType::MXFP4));
        assert!(c.windows(2).all(|w| bits(w[0]) <= bits(w[1])));
    }
}
