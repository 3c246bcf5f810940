//! The 8-dimensional lattices the IQ2 and IQ1 quantizers search: which points of a type's
//! grid a vector of levels is, and, for a vector that is not a grid point, which grid
//! points are nearest to it. ggml builds these maps at start-up (`iq2xs_init_impl`); here
//! each is built on first use and kept for the life of the process.
//!
//! A grid point has 8 coordinates, each one of three levels `l` in `0..=2` (the format's
//! grid bytes 8/25/43 for IQ2, -1/0/1 for IQ1_S and IQ1_M; see `formats::iq_grids`). The
//! quantizers round a group of 8 values to levels `0..=2` and look the level vector up by
//! its key `sum(l_k << 2k)`: either it is a grid point, or the search compares the
//! candidates listed for it, the grid points at the `nwant` smallest squared distances
//! from it, measured between the positions `2l + 1`. Candidates are listed by distance,
//! then by grid index, as ggml's sort lists them; the quantizer keeps the first one of
//! least weighted error, so this order is part of the bytes written.
//!
//! Keys run over all four values of each 2-bit field (a rounded level can be 3 before the
//! quantizer clamps it, and ggml's table covers those keys too), so the key space is
//! `2 * (4^8 - 1) / 3 + 2` = 43692 entries.

use std::sync::OnceLock;

use crate::formats::iq_grids;

/// Number of keys: every 8-field key whose fields are at most 2 (ggml's `kmap_size`).
const KEYS: usize = 43692;

/// One type's grid with its key map and neighbour lists.
pub(super) struct Lattice {
    /// Grid points as positions `2l + 1`, one byte per coordinate (ggml's `kgrid_q2xs`).
    points: Vec<[i8; 8]>,
    /// For each key: the grid index if it is a grid point, else the start of its neighbour
    /// list in `neighbours`.
    map: Vec<Entry>,
    /// Neighbour lists, one after the other; each list's length is in its `Entry`.
    neighbours: Vec<u16>,
}

#[derive(Clone, Copy)]
enum Entry {
    Point(u16),
    Near { start: u32, len: u16 },
}

/// What a key is: a grid point, or the candidates to search.
pub(super) enum Lookup<'a> {
    Point(usize),
    Near(&'a [u16]),
}

impl Lattice {
    /// Build the maps for a format grid whose coordinates are the bytes `levels[l]`,
    /// keeping for each off-grid key the grid points at its `nwant` nearest distances.
    fn build(grid: &[u64], levels: [u8; 3], nwant: usize) -> Lattice {
        let points: Vec<[i8; 8]> = grid
            .iter()
            .map(|&g| {
                let mut p = [0i8; 8];
                for (k, v) in g.to_le_bytes().into_iter().enumerate() {
                    // The generated grids hold only these three bytes (a unit test checks).
                    let l = levels.iter().position(|&b| b == v).unwrap_or(0);
                    p[k] = 2 * l as i8 + 1;
                }
                p
            })
            .collect();
        let mut map = vec![Entry::Near { start: 0, len: 0 }; KEYS];
        let mut on_grid = vec![false; KEYS];
        for (i, p) in points.iter().enumerate() {
            let key = key_of(p.map(|q| (q - 1) / 2));
            map[key] = Entry::Point(i as u16);
            on_grid[key] = true;
        }
        let mut neighbours = Vec::new();
        let mut d2 = vec![0u16; points.len()];
        let mut order: Vec<u16> = Vec::with_capacity(points.len());
        for key in 0..KEYS {
            if on_grid[key] {
                continue;
            }
            let mut pos = [0i32; 8];
            for (k, p) in pos.iter_mut().enumerate() {
                *p = 2 * ((key >> (2 * k)) & 3) as i32 + 1;
            }
            for (d, g) in d2.iter_mut().zip(&points) {
                let mut s = 0i32;
                for k in 0..8 {
                    let diff = i32::from(g[k]) - pos[k];
                    s += diff * diff;
                }
                *d = s as u16;
            }
            // The `nwant` smallest distinct distances; every grid point at one of them is a
            // candidate, in order of distance then index.
            let mut nearest: Vec<u16> = Vec::with_capacity(nwant + 1);
            for &d in &d2 {
                if let Err(at) = nearest.binary_search(&d) {
                    if at < nwant {
                        nearest.insert(at, d);
                        nearest.truncate(nwant);
                    }
                }
            }
            let limit = nearest.last().copied().unwrap_or(0);
            order.clear();
            order.extend((0..points.len() as u16).filter(|&j| d2[usize::from(j)] <= limit));
            order.sort_by_key(|&j| d2[usize::from(j)]);
            map[key] = Entry::Near {
                start: neighbours.len() as u32,
                len: order.len() as u16,
            };
            neighbours.extend_from_slice(&order);
        }
        Lattice {
            points,
            map,
            neighbours,
        }
    }

    /// What the level vector with key `key` is (`key < 43692`, see [`key_of`]).
    #[inline]
    pub(super) fn lookup(&self, key: usize) -> Lookup<'_> {
        match self.map[key] {
            Entry::Point(i) => Lookup::Point(usize::from(i)),
            Entry::Near { start, len } => {
                let start = start as usize;
                Lookup::Near(&self.neighbours[start..start + usize::from(len)])
            }
        }
    }

    /// The grid index of a level vector, if it is a grid point.
    #[inline]
    pub(super) fn index_of(&self, levels: &[i8]) -> Option<usize> {
        let mut l = [0i8; 8];
        l.copy_from_slice(&levels[..8]);
        match self.lookup(key_of(l)) {
            Lookup::Point(i) => Some(i),
            Lookup::Near(_) => None,
        }
    }

    /// Grid point `i` as positions `2l + 1`.
    #[allow(dead_code)] // For the IQ1 quantizers, which score points themselves.
    #[inline]
    pub(super) fn point(&self, i: usize) -> &[i8; 8] {
        &self.points[i]
    }

    /// ggml's `iq2_find_best_neighbour`: of the candidates, the grid point whose positions
    /// times `scale` are nearest `xval` in the `weight`ed squared error (the first of equal
    /// errors); writes its levels into `levels` and returns its index.
    pub(super) fn best_neighbour(
        &self,
        candidates: &[u16],
        xval: &[f32],
        weight: &[f32],
        scale: f32,
        levels: &mut [i8],
    ) -> usize {
        let mut best_d2 = f32::MAX;
        let mut best = usize::from(candidates.first().copied().unwrap_or(0));
        for &j in candidates {
            let p = &self.points[usize::from(j)];
            let mut d2 = 0.0f32;
            for i in 0..8 {
                let diff = scale * f32::from(p[i]) - xval[i];
                d2 += weight[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                best = usize::from(j);
            }
        }
        let p = &self.points[best];
        for i in 0..8 {
            levels[i] = (p[i] - 1) / 2;
        }
        best
    }
}

/// The key of 8 levels, each `0..=3`: `sum(l_k << 2k)`.
#[inline]
pub(super) fn key_of(levels: [i8; 8]) -> usize {
    let mut key = 0usize;
    for (k, &l) in levels.iter().enumerate() {
        key |= ((l as usize) & 3) << (2 * k);
    }
    key
}

/// The IQ2 grids' coordinate bytes, level 0, 1, 2.
const IQ2_LEVELS: [u8; 3] = [0x08, 0x19, 0x2b];

/// IQ2_XXS's lattice (256 points, candidates at the 2 nearest distances).
pub(super) fn iq2_xxs() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&iq_grids::IQ2XXS_GRID, IQ2_LEVELS, 2))
}

/// IQ2_XS's lattice (512 points, candidates at the 2 nearest distances).
pub(super) fn iq2_xs() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&iq_grids::IQ2XS_GRID, IQ2_LEVELS, 2))
}

/// IQ2_S's lattice (1024 points, candidates at the nearest distance only).
pub(super) fn iq2_s() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&iq_grids::IQ2S_GRID, IQ2_LEVELS, 1))
}

/// IQ1_S's and IQ1_M's lattice (2048 points with coordinates -1/0/1, candidates at the 3
/// nearest distances).
#[allow(dead_code)] // For the IQ1 quantizers.
pub(super) fn iq1() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&iq_grids::IQ1S_GRID, [0xff, 0x00, 0x01], 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(lat: &Lattice, grid: &[u64], levels: [u8; 3]) {
        assert_eq!(lat.points.len(), grid.len());
        // Every grid byte is one of the three levels, and every point maps back to itself.
        for (i, g) in grid.iter().enumerate() {
            assert!(g.to_le_bytes().iter().all(|b| levels.contains(b)), "{i}");
            let l = lat.point(i).map(|p| (p - 1) / 2);
            assert_eq!(lat.index_of(&l), Some(i));
        }
        // Every other key has candidates, sorted by distance then index.
        for key in 0..KEYS {
            if let Lookup::Near(c) = lat.lookup(key) {
                assert!(!c.is_empty(), "{key}");
                let pos: Vec<i32> = (0..8)
                    .map(|k| 2 * ((key >> (2 * k)) & 3) as i32 + 1)
                    .collect();
                let d = |j: u16| -> i32 {
                    let p = lat.point(usize::from(j));
                    (0..8).map(|k| (i32::from(p[k]) - pos[k]).pow(2)).sum()
                };
                assert!(
                    c.windows(2).all(|w| (d(w[0]), w[0]) < (d(w[1]), w[1])),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn lattices_map_every_key() {
        check(iq2_xxs(), &iq_grids::IQ2XXS_GRID, IQ2_LEVELS);
        check(iq2_xs(), &iq_grids::IQ2XS_GRID, IQ2_LEVELS);
        check(iq2_s(), &iq_grids::IQ2S_GRID, IQ2_LEVELS);
        check(iq1(), &iq_grids::IQ1S_GRID, [0xff, 0x00, 0x01]);
    }

    #[test]
    fn the_nearest_point_is_a_candidate() {
        // Levels (3, 0, ..., 0), positions (7, 1, ..., 1), are no grid point; IQ2_XXS's point
        // 1, levels (2, 0, ..., 0), is the only one at distance 4, so it is listed first and
        // is the best fit of values equal to its own positions.
        let lat = iq2_xxs();
        let Lookup::Near(c) = lat.lookup(key_of([3, 0, 0, 0, 0, 0, 0, 0])) else {
            panic!("levels (3, 0, ..) are a grid point");
        };
        assert_eq!(c[0], 1);
        let xval = [5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let mut levels = [9i8; 8];
        assert_eq!(lat.best_neighbour(c, &xval, &[1.0; 8], 1.0, &mut levels), 1);
        assert_eq!(levels, [2, 0, 0, 0, 0, 0, 0, 0]);
    }
}
