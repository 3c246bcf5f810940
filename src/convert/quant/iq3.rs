//! The 3-bit lattice types IQ3_XXS and IQ3_S, quantized as `llama-quantize` does: ggml's
//! `quantize_iq3_xxs` / `quantize_iq3_s`, with an importance vector when there is one and
//! with the squared values as weights when there is none (both types accept either).
//! Their decoders are format knowledge and live in `formats::iq3`.
//!
//! Each group of four values (after their signs are taken off) must land on a point of a
//! 4-dimensional grid whose coordinates are odd levels `2l + 1`, `l` in 0..8; only 256
//! (IQ3_XXS) or 512 (IQ3_S) of the 4096 level combinations are grid points. Each 32-value
//! group tries a range of scales; a 4-value group whose rounded levels are not a grid
//! point takes the nearest grid points by weighted error among a precomputed neighbour
//! list. That list, for every off-grid combination, is every grid point in the nearest two
//! (IQ3_XXS) or three (IQ3_S) squared-distance shells, in order of distance then index:
//! ggml's `iq3xs_init_impl`, computed here once per process ([`Lattice3`]) from the grid
//! tables of the format, so that ties resolve as in ggml.
//!
//! ggml quirk kept for byte identity: IQ3_S advances its index and sign outputs only for
//! groups that are not all zero, so the groups after an all-zero group are stored one
//! slot early (their ninth index bits and scales stay in place).

use std::sync::OnceLock;

use super::kquants::QK_K;
use super::put_f16;
use super::search::nearest_int;
use crate::formats::iq_grids::{IQ3S_GRID, IQ3XXS_GRID};

pub(super) use crate::formats::iq3::{IQ3_S_BYTES, IQ3_XXS_BYTES};

/// Levels per coordinate; a level `l` stands for the value `2l + 1`.
const KMAX_Q: i32 = 8;
/// Level combinations: 3 bits per coordinate, 4 coordinates.
const KMAP_SIZE: usize = 4096;
/// IQ3_XXS groups whose largest magnitude is below this are all zero.
const GROUP_MAX_EPS_IQ3_XXS: f32 = 1e-8;

/// One of the two 4-dimensional grids with its level map and neighbour lists.
pub(super) struct Lattice3 {
    /// Each point's four levels (0..8).
    levels: Vec<[u8; 4]>,
    /// For a level combination `l0 | l1 << 3 | l2 << 6 | l3 << 9`: its point index when it
    /// is a grid point, else `-(offset + 1)` of its list in `neighbours`.
    map: Vec<i32>,
    /// Lists of a count followed by that many point indices.
    neighbours: Vec<u16>,
}

/// The combination key of four levels.
#[inline(always)]
fn key(l: &[i8]) -> usize {
    (l[0] as usize) | (l[1] as usize) << 3 | (l[2] as usize) << 6 | (l[3] as usize) << 9
}

impl Lattice3 {
    /// Build the map and neighbour lists for points given by their levels; `shells` is how
    /// many distinct distances each neighbour list spans.
    fn build(levels: Vec<[u8; 4]>, shells: usize) -> Lattice3 {
        let mut map = vec![-1i32; KMAP_SIZE];
        for (i, p) in levels.iter().enumerate() {
            let l = p.map(|v| v as i8);
            map[key(&l)] = i as i32;
        }
        let coords: Vec<[i32; 4]> = levels
            .iter()
            .map(|p| p.map(|l| 2 * i32::from(l) + 1))
            .collect();
        let mut neighbours = Vec::new();
        let mut dist: Vec<(i32, u16)> = Vec::with_capacity(levels.len());
        for (u, slot) in map.iter_mut().enumerate() {
            if *slot >= 0 {
                continue;
            }
            let pos: [i32; 4] = std::array::from_fn(|k| 2 * ((u >> (3 * k)) & 7) as i32 + 1);
            dist.clear();
            for (j, c) in coords.iter().enumerate() {
                let d2 = (0..4).map(|k| (c[k] - pos[k]) * (c[k] - pos[k])).sum();
                dist.push((d2, j as u16));
            }
            dist.sort_unstable();
            *slot = -(neighbours.len() as i32 + 1);
            let start = neighbours.len();
            neighbours.push(0);
            let (mut d2, mut have) = (dist[0].0, 1);
            for &(dj, j) in &dist {
                if dj > d2 {
                    if have == shells {
                        break;
                    }
                    d2 = dj;
                    have += 1;
                }
                neighbours.push(j);
            }
            neighbours[start] = (neighbours.len() - start - 1) as u16;
        }
        Lattice3 {
            levels,
            map,
            neighbours,
        }
    }

    /// Levels of grid points packed one byte per coordinate, given the byte of each level.
    fn from_grid(grid: &[u32], level_bytes: &[u8; 8], shells: usize) -> Lattice3 {
        let levels = grid
            .iter()
            .map(|&p| {
                std::array::from_fn(|k| {
                    let b = (p >> (8 * k)) as u8;
                    level_bytes.iter().position(|&v| v == b).unwrap_or(0) as u8
                })
            })
            .collect();
        Lattice3::build(levels, shells)
    }

    /// The IQ3_XXS grid: 256 points, neighbours from the nearest two shells.
    pub(super) fn xxs() -> &'static Lattice3 {
        static L: OnceLock<Lattice3> = OnceLock::new();
        L.get_or_init(|| Lattice3::from_grid(&IQ3XXS_GRID, &[4, 12, 20, 28, 36, 44, 52, 62], 2))
    }

    /// The IQ3_S grid: 512 points, neighbours from the nearest three shells.
    pub(super) fn s() -> &'static Lattice3 {
        static L: OnceLock<Lattice3> = OnceLock::new();
        L.get_or_init(|| Lattice3::from_grid(&IQ3S_GRID, &[1, 3, 5, 7, 9, 11, 13, 15], 3))
    }

    /// The grid point for the levels in `l`, if they are one.
    #[inline(always)]
    fn index(&self, l: &[i8]) -> Option<usize> {
        let m = self.map[key(l)];
        (m >= 0).then_some(m as usize)
    }

    /// ggml's `iq3_find_best_neighbour`: among the neighbours of the off-grid combination
    /// `l`, the point nearest `scale * point` to `x` by weighted squared error (first wins
    /// ties); writes its levels into `l` and returns its index.
    fn best_neighbour(&self, x: &[f32], w: &[f32], scale: f32, l: &mut [i8]) -> usize {
        let at = (-self.map[key(l)] - 1) as usize;
        let n = usize::from(self.neighbours[at]);
        let mut best_d2 = f32::MAX;
        let mut best = usize::from(self.neighbours[at + 1]);
        for &j in &self.neighbours[at + 1..at + 1 + n] {
            let p = &self.levels[usize::from(j)];
            let mut d2 = 0.0f32;
            for i in 0..4 {
                let q = (2 * i32::from(p[i]) + 1) as f32;
                let diff = scale * q - x[i];
                d2 += w[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                best = usize::from(j);
            }
        }
        for i in 0..4 {
            l[i] = self.levels[best][i] as i8;
        }
        best
    }
}

/// How the two types differ in quantizing a 32-value group.
struct Variant {
    /// IQ3_XXS keeps 7 sign bits per 8 values and flips the least important value to make
    /// the count of minus signs even; IQ3_S keeps all 8.
    even_signs: bool,
    /// Scale trials `is` in `-trials..=trials`.
    trials: i32,
}

/// One quantized 32-value group: its scale, levels and sign bytes.
struct Group {
    scale: f32,
    l: [i8; 32],
    signs: [u8; 4],
}

/// The group search of ggml's `quantize_row_iq3_xxs_impl` / `quantize_row_iq3_s_impl`
/// for one group of 32 values with weights `weight`; `None` for an all-zero group.
fn group(lat: &Lattice3, v: &Variant, xb: &[f32], weight: &[f32; 32]) -> Option<Group> {
    let mut waux = [0.0f32; 32];
    for i in 0..32 {
        waux[i] = weight[i].sqrt();
    }
    let mut xval = [0.0f32; 32];
    let mut signs = [0u8; 4];
    for k in 0..4 {
        let mut nflip = 0;
        let mut s = 0u8;
        for i in 0..8 {
            let x = xb[8 * k + i];
            if x >= 0.0 {
                xval[8 * k + i] = x;
            } else {
                xval[8 * k + i] = -x;
                nflip += 1;
                s |= 1 << i;
            }
        }
        if v.even_signs {
            if nflip % 2 == 1 {
                let wx = |i: usize| weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                let (mut imin, mut min) = (0, wx(0));
                for i in 1..8 {
                    let ax = wx(i);
                    if ax < min {
                        min = ax;
                        imin = i;
                    }
                }
                xval[8 * k + imin] = -xval[8 * k + imin];
                s ^= 1 << imin;
            }
            s &= 127;
        }
        signs[k] = s;
    }
    // ggml's MAX: the later value wins unless it is strictly larger.
    let mut max = xval[0];
    for &x in &xval[1..] {
        max = if max > x { max } else { x };
    }
    let zero = if v.even_signs {
        max < GROUP_MAX_EPS_IQ3_XXS
    } else {
        max == 0.0
    };
    if zero {
        return None;
    }
    let mut l = [0i8; 32];
    let mut laux = [0i8; 32];
    let mut best = 0.0f32;
    let mut scale = max / (2 * KMAX_Q - 1) as f32;
    // IQ3_XXS starts with every point marked on the grid, IQ3_S with none.
    let mut on_grid = [v.even_signs; 8];
    let mut on_grid_aux = [true; 8];
    for is in -v.trials..=v.trials {
        let id = ((2 * KMAX_Q - 1) as f32 + is as f32 * 0.2) / max;
        let this_scale = 1.0 / id;
        for k in 0..8 {
            for i in 0..4 {
                let q = nearest_int(0.5 * (id * xval[4 * k + i] - 1.0));
                laux[4 * k + i] = q.clamp(0, KMAX_Q - 1) as i8;
            }
            on_grid_aux[k] = true;
            if lat.index(&laux[4 * k..4 * k + 4]).is_none() {
                on_grid_aux[k] = false;
                lat.best_neighbour(
                    &xval[4 * k..4 * k + 4],
                    &waux[4 * k..4 * k + 4],
                    this_scale,
                    &mut laux[4 * k..4 * k + 4],
                );
            }
        }
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for i in 0..32 {
            let w = weight[i];
            let q = (2 * i32::from(laux[i]) + 1) as f32;
            sumqx += w * xval[i] * q;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
            on_grid = on_grid_aux;
        }
    }
    if on_grid.iter().any(|g| !g) && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..8 {
            // IQ3_XXS redoes only the off-grid points, IQ3_S all of them.
            if v.even_signs && on_grid[k] {
                continue;
            }
            let mut lk = [0i8; 4];
            for i in 0..4 {
                let q = nearest_int(0.5 * (id * xval[4 * k + i] - 1.0));
                lk[i] = q.clamp(0, KMAX_Q - 1) as i8;
            }
            let p = match lat.index(&lk) {
                Some(p) => p,
                None => lat.best_neighbour(
                    &xval[4 * k..4 * k + 4],
                    &waux[4 * k..4 * k + 4],
                    scale,
                    &mut lk,
                ),
            };
            for i in 0..4 {
                l[4 * k + i] = lat.levels[p][i] as i8;
            }
        }
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for i in 0..32 {
            let w = weight[i];
            let q = (2 * i32::from(l[i]) + 1) as f32;
            sumqx += w * xval[i] * q;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        // ggml: cannot happen, but a negative scale is stored as its magnitude with every
        // sign flipped.
        scale = -scale;
        let mask = if v.even_signs { 127 } else { 255 };
        for s in &mut signs {
            *s = !*s & mask;
        }
    }
    Some(Group { scale, l, signs })
}

/// The weights of 32 values: importance times `sqrt(sigma2 + x^2)`, or `x^2` without one.
fn weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32) -> [f32; 32] {
    let mut w = [0.0f32; 32];
    match qw {
        Some(qw) => {
            for i in 0..32 {
                w[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
            }
        }
        None => {
            for i in 0..32 {
                w[i] = xb[i] * xb[i];
            }
        }
    }
    w
}

/// `2 * mean(x^2)` of a super-block, summed in ggml's order.
fn sigma2(x: &[f32]) -> f32 {
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    2.0 * sumx2 / QK_K as f32
}

/// The grid point of levels that the search left on the grid.
#[inline(always)]
fn point(lat: &Lattice3, l: &[i8]) -> usize {
    // Every level set the search keeps is a grid point (ggml aborts otherwise).
    lat.index(l).unwrap_or(0)
}

/// The 4-bit code of a group scale against the super-block scale's inverse.
#[inline(always)]
fn scale_code(id: f32, scale: f32) -> u8 {
    nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15) as u8
}

/// One IQ3_XXS super-block of 256 values (`quantize_row_iq3_xxs_impl` with grid 256) into
/// 98 bytes; `qw` is the block's importance, if any.
pub(super) fn quantize_iq3_xxs(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let lat = Lattice3::xxs();
    let v = Variant {
        even_signs: true,
        trials: 15,
    };
    y.fill(0);
    let s2 = sigma2(x);
    let mut scales = [0.0f32; 8];
    let mut ss = [0u32; 8];
    let mut max_scale = 0.0f32;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let w = weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), s2);
        let Some(g) = group(lat, &v, xb, &w) else {
            continue;
        };
        for k in 0..8 {
            y[2 + 8 * ib + k] = point(lat, &g.l[4 * k..4 * k + 4]) as u8;
        }
        ss[ib] = u32::from(g.signs[0])
            | u32::from(g.signs[1]) << 7
            | u32::from(g.signs[2]) << 14
            | u32::from(g.signs[3]) << 21;
        scales[ib] = g.scale;
        max_scale = if max_scale > g.scale {
            max_scale
        } else {
            g.scale
        };
    }
    if max_scale == 0.0 {
        y.fill(0);
        return;
    }
    let d = max_scale / 31.0;
    put_f16(&mut y[0..2], d * 1.0125);
    let id = 1.0 / d;
    for ib in 0..8 {
        let v = ss[ib] | u32::from(scale_code(id, scales[ib])) << 28;
        y[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&v.to_le_bytes());
    }
}

/// One IQ3_S super-block of 256 values (`quantize_row_iq3_s_impl`, groups of 32) into 110
/// bytes; `qw` is the block's importance, if any.
pub(super) fn quantize_iq3_s(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let lat = Lattice3::s();
    let v = Variant {
        even_signs: false,
        trials: 9,
    };
    y.fill(0);
    let s2 = sigma2(x);
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    // Where the next group's indices and signs go (see the module note on all-zero groups).
    let (mut qs_at, mut signs_at) = (2usize, 74usize);
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let w = weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), s2);
        let Some(g) = group(lat, &v, xb, &w) else {
            continue;
        };
        for k in 0..8 {
            let p = point(lat, &g.l[4 * k..4 * k + 4]);
            y[qs_at + k] = (p & 255) as u8;
            y[66 + ib] |= ((p >> 8) as u8) << k;
        }
        qs_at += 8;
        y[signs_at..signs_at + 4].copy_from_slice(&g.signs);
        signs_at += 4;
        scales[ib] = g.scale;
        max_scale = if max_scale > g.scale {
            max_scale
        } else {
            g.scale
        };
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    put_f16(&mut y[0..2], d * 1.033);
    let id = 1.0 / d;
    for ib in (0..8).step_by(2) {
        y[106 + ib / 2] = scale_code(id, scales[ib]) | scale_code(id, scales[ib + 1]) << 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lattices_match_ggml_sizes() {
        // Every off-grid combination has a list; every list is non-empty.
        for (lat, points) in [(Lattice3::xxs(), 256), (Lattice3::s(), 512)] {
            assert_eq!(lat.levels.len(), points);
            assert_eq!(lat.map.iter().filter(|&&m| m >= 0).count(), points);
            for &m in lat.map.iter().filter(|&&m| m < 0) {
                assert!(lat.neighbours[(-m - 1) as usize] > 0);
            }
        }
    }
}
