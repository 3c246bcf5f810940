//! The reference product `x [m, k] W^T` for many activation rows (prompts, parity scoring),
//! with the weight matrix `W [n, k]` read in its stored type.
//!
//! Why hand-written: reference math needs exact f32 multiply-adds of the dequantized weights,
//! and the weights stay in their stored type (F16, BF16, ggml blocks). A BLAS-style GEMM
//! (candle's, through the `gemm` crate) only takes f32 matrices, so each tile of weights had
//! to be dequantized into a fresh f32 matrix, which the GEMM then copied again into its own
//! panels: two passes over every weight, fresh pages for every tile, and a serial
//! concatenation of tiles. No crate packs from F16 or ggml blocks into its panels. Here the
//! panels are filled straight from the stored bytes: `NR` weight rows at a time, `KC` values
//! wide, dequantized into a buffer that stays in L1 and laid out as the microkernel reads
//! them, into per-thread buffers that are reused from call to call.
//!
//! The loops are the usual ones of a cache-blocked GEMM. The activations of all rows are
//! packed once, on the pool, into `MR`-row panels, slice by `KC`-wide slice (the panels of
//! one slice are one run of memory), shared by every task. The output is cut into tiles of
//! `NC` columns (weight rows) by all the rows (or, for narrow products, by a part of the
//! rows). A task is one tile in one slice: it dequantizes the slice of its `NC` weight rows
//! into `NR`-row panels (kept in L2), and each activation panel (in L1, read from L3) runs
//! along them with the `MR x NR` microkernel. The threads of the pool claim the tasks in
//! order from a counter, slice after slice, so both work in the same slice (its activations
//! shared in L3) and a thread done with a slice goes on to the next instead of waiting for
//! the other: a product is one parallel step. A tile takes its slices in order (a claim
//! waits in the rare case that the tile's previous slice is still running), which fixes
//! the order of each output's sum. So every weight is dequantized once per product, from
//! memory where a real model's weights come from. Products that share their input (q/k/v,
//! gate/up) run in one call ([`gemm_many`]): one packing, one parallel step.
//! (Session 12 had a parallel step per slice, tasks split by halves; session 11 one row
//! chunk per thread, each dequantizing the whole matrix; see `docs/benchmarks.md`.)
//! With AVX2 and FMA (detected at run time) the microkernel keeps its 6 x 16 sums in 12
//! vector registers; elsewhere a portable kernel computes the same sums with
//! `f32::mul_add`, so the bits are the same. While it runs along a panel it asks the cache
//! for the tile's next activation panel (session 14): each panel is read from L3 once per
//! tile, and without the hint the first loads of each new panel wait on it (one thread,
//! m = 3328, the 1.1B shapes: 81-94 GFLOP/s before, 92-105 after; in the 2-thread parity
//! run, where the batches are 1024 rows, about 1 %).
//!
//! No AVX-512 tier (session 11): a 6 x 32 AVX-512 kernel over two adjacent panels (12 zmm
//! sums, same bits) ran level with this one to a few percent slower on Zen 4, which runs a
//! 512-bit multiply-add as two 256-bit halves (peak about 115 GFLOP/s per core at 3.6 GHz
//! either way; one thread, m = 3328, 2048 x 2048, CPU time, loaded machine: F16 77-87
//! GFLOP/s against 82-89, Q4_K 79-88 against 84-93). Converting F16 panels by AVX-512's
//! `vcvtph2ps` needs pulp's `x86-v4` feature, and with it on, pulp's V3 wrappers elsewhere
//! compiled to out-of-line intrinsic calls: SmolLM2 Q4_1 generation in native math ran at
//! 16.7-18.2 tokens/s against 89.5-90.8 without it. Both were left out.
//!
//! Each output element is the sum over the `KC` slices, in order, of a fused multiply-add
//! chain started from zero within the slice. That order depends on `k` alone: not on the
//! tiles, the thread count or where the element sits in a panel, so results do not change
//! with the number of threads.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// Activation rows per microkernel call (broadcast operands).
const MR: usize = 6;
/// Weight rows per microkernel call (two 8-lane vectors).
const NR: usize = 16;
/// Width of one slice of the dot products: an activation panel of `MR x KC` f32 (24 KiB)
/// stays in L1 while it runs along the weight panels, and each output is read and written
/// once per slice. A multiple of every ggml block size (32, 256), so a slice is whole
/// blocks. Measured on Zen 4 at the 1.1B pair's shapes (F16, 2048 x 2048 and 2048 x 5632,
/// one thread): 1024 about 8 % faster than 256, 2048 slower (the panel leaves L1). On the
/// whole 1.1B pair (weights streamed from memory, 2 threads) 512 was 10 % slower than 1024
/// and 2048 level with it within the run-to-run noise.
pub(super) const KC: usize = 1024;
/// Weight rows packed together for one `KC` slice: their panels (`NC x KC` f32, 256 KiB)
/// stay in L2 while each activation panel runs along them (measured: 64 to 128 alike, 256
/// slower with the larger `KC`).
const NC: usize = 64;
/// Bytes of packed activations at most (all the rows of a group, the whole width): a
/// product of more rows runs group after group, so memory stays bounded whatever the batch
/// (the 1.1B model's feed-forward output, 5632 wide, takes 2976 rows a group). It stands in
/// the memory estimates for the dequantized tile of the candle path, which the products that
/// come here do not make (`stored::TILE_BYTES`, the larger).
const PACK_BYTES: usize = 64 << 20;
/// Output rows per task at least, so that dequantizing the task's weight rows stays a small
/// part of its work.
const MIN_CHUNK_ROWS: usize = 64;
/// Tasks per thread wanted: enough that a thread slowed by other work (the layer reader, the
/// kept-logits writer) leaves no other thread waiting at the end of a product. Tasks are
/// `NC`-column blocks of all the rows when there are columns enough (every weight row is
/// then dequantized once per product); only narrow products cut the rows too.
const TASKS_PER_THREAD: usize = 8;
/// Per-thread buffers, reused across calls.
#[derive(Default)]
struct Scratch {
    /// `NR` weight rows of one slice, row by row: `[NR][KC]`.
    rows: Vec<f32>,
    /// `NC` weight rows of one slice as the microkernel reads them: `[NC / NR][KC][NR]`.
    b: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The packed activations of a group, `[slice][panel][KC][MR]`, shared by every task and kept from
/// call to call (a product of 1024 rows, 5632 wide, packs 22 MiB; a fresh buffer each call
/// would be faulted in and cleared each time).
static PACKED: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// One product of [`gemm_many`]: `n` weight rows, and its output `[m, n]`.
pub(super) struct Product<'o> {
    pub n: usize,
    pub out: &'o mut [f32],
}

/// One task's part of the output: columns `j0..j0 + nc` of product `product`, for the rows
/// of panels `p0..`, one slice per row.
struct Tile<'o> {
    product: usize,
    p0: usize,
    j0: usize,
    nc: usize,
    rows: Vec<&'o mut [f32]>,
}

/// Panels per row chunk, for `panels` activation panels and `blocks` column blocks on
/// `threads` threads: whole (one chunk) when the column blocks alone give every thread
/// [`TASKS_PER_THREAD`] tasks, else cut so that they do.
fn chunk_panels(panels: usize, blocks: usize, threads: usize) -> usize {
    let want = (threads * TASKS_PER_THREAD).max(1);
    let chunks = want.div_ceil(blocks.max(1)).clamp(1, panels.max(1));
    panels.div_ceil(chunks).max(MIN_CHUNK_ROWS.div_ceil(MR))
}

/// The outputs of `products` (`panels` activation panels of rows each) cut into tiles, in
/// the order the threads claim them in each slice: product by product, [`NC`]-column block
/// by block, each block in row chunks of [`chunk_panels`] panels.
fn tiles<'o>(products: &'o mut [Product<'_>], panels: usize, threads: usize) -> Vec<Tile<'o>> {
    let blocks: usize = products.iter().map(|p| p.n.div_ceil(NC)).sum();
    let chunk = chunk_panels(panels, blocks, threads);
    let mut tiles = Vec::new();
    for (product, p) in products.iter_mut().enumerate() {
        let n = p.n;
        let first = tiles.len();
        // per column block: its first tile (from `first`) and its chunk
        let mut starts = Vec::with_capacity(n.div_ceil(NC));
        for b in 0..n.div_ceil(NC) {
            starts.push((tiles.len() - first, chunk));
            for c in 0..panels.div_ceil(chunk) {
                tiles.push(Tile {
                    product,
                    p0: c * chunk,
                    j0: b * NC,
                    nc: NC.min(n - b * NC),
                    rows: Vec::with_capacity(chunk * MR),
                });
            }
        }
        for (r, row) in p.out.chunks_exact_mut(n).enumerate() {
            for ((start, chunk), seg) in starts.iter().zip(row.chunks_mut(NC)) {
                tiles[first + start + r / (chunk * MR)].rows.push(seg);
            }
        }
    }
    tiles
}

/// `out [m, n] = x [m, k] W^T`, where `fill(j, k0, dst)` writes weight row `j`, columns
/// `k0..k0 + dst.len()`, as f32 into `dst` (`k0` a multiple of [`KC`], the length `KC` or
/// what is left of the row).
pub(super) fn gemm<F>(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    fill: &F,
    out: &mut [f32],
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    let mut products = [Product { n, out }];
    gemm_many(x, m, k, &mut products, &|_, j, k0, dst| fill(j, k0, dst))
}

/// `n` zeros for an output, written on the pool: an output buffer of a few MB usually comes
/// back from the allocator's heap, which `vec!` clears with a memset on the calling thread
/// while the other threads wait.
pub(super) fn zeroed(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0f32, n));
    v
}

/// [`gemm`] of `x` with several weight matrices of width `k` at once (q/k/v, gate/up): the
/// activations are packed once for all of them and the tasks of all of them share one
/// parallel step. `fill(p, j, k0, dst)` fills from matrix `p`, row `j`. Each output gets
/// the bits [`gemm`] gives it alone.
pub(super) fn gemm_many<F>(
    x: &[f32],
    m: usize,
    k: usize,
    products: &mut [Product<'_>],
    fill: &F,
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    let mut bad = (x.len() != m * k).then_some((x.len(), 0, 0));
    for p in products.iter() {
        if p.out.len() != m * p.n {
            bad = bad.or(Some((x.len(), p.n, p.out.len())));
        }
    }
    if let Some((inputs, n, outputs)) = bad {
        candle_core::bail!("gemm of {inputs} inputs ({m}x{k}) into {outputs} outputs ({m}x{n})");
    }
    if m == 0 || products.iter().all(|p| p.n == 0) {
        return Ok(());
    }
    if k == 0 {
        products.iter_mut().for_each(|p| p.out.fill(0.0));
        return Ok(());
    }
    in_groups(x, m, k, products, fill, PACK_BYTES)
}

/// [`gemm_many`]'s checked operands, in groups of rows whose packed activations take at most
/// `pack_bytes`.
fn in_groups<F>(
    x: &[f32],
    m: usize,
    k: usize,
    products: &mut [Product<'_>],
    fill: &F,
    pack_bytes: usize,
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    let cap = (pack_bytes / 4 / (k * MR)).max(1) * MR;
    let group = m.div_ceil(m.div_ceil(cap)).div_ceil(MR) * MR;
    for g0 in (0..m).step_by(group) {
        let rows = group.min(m - g0);
        let mut parts: Vec<Product<'_>> = products
            .iter_mut()
            .map(|p| Product {
                n: p.n,
                out: &mut p.out[g0 * p.n..(g0 + rows) * p.n],
            })
            .collect();
        let x = &x[g0 * k..(g0 + rows) * k];
        group_product(x, rows, k, &mut parts, fill, Kernel::Best)?;
    }
    Ok(())
}

/// Which microkernel to run.
#[derive(Clone, Copy, PartialEq)]
enum Kernel {
    /// The best this CPU has.
    Best,
    /// [`Portable`] (for the tests: every kernel must give its bits).
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

/// [`gemm_many`] of one group of rows: the activations packed (on the pool), then the
/// tasks claimed in order by every thread of the pool, each running all the slices of its
/// tile, so a product has one parallel step, not one per slice.
fn group_product<F>(
    x: &[f32],
    m: usize,
    k: usize,
    products: &mut [Product<'_>],
    fill: &F,
    kernel: Kernel,
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    let panels = m.div_ceil(MR);
    let threads = rayon::current_num_threads().max(1);
    // a product running while another holds the buffer (tests running side by side) packs
    // into a fresh one
    let mut a = PACKED
        .try_lock()
        .map(|mut a| std::mem::take(&mut *a))
        .unwrap_or_default();
    // grown, never shrunk: the down projection's wider rows would otherwise be cleared
    // afresh after every narrower product, on this thread while the pool waits
    if a.len() < panels * k * MR {
        a.resize(panels * k * MR, 0.0);
    }
    // slice by slice, as the tasks read them: `[slice][panel][kc][MR]`, so that the panels
    // of one slice are one run of memory
    let full = k / KC * KC;
    let (whole, rest) = a[..panels * k * MR].split_at_mut(panels * full * MR);
    whole
        .par_chunks_mut(KC * MR)
        .enumerate()
        .chain(
            rest.par_chunks_mut((k - full).max(1) * MR)
                .enumerate()
                .map(|(p, panel)| (full / KC * panels + p, panel)),
        )
        .for_each(|(i, panel)| {
            let (slice, p) = (i / panels, i % panels);
            let k0 = slice * KC;
            pack_panel(x, k, m, p, k0, KC.min(k - k0), panel);
        });
    let packed = &a[..panels * k * MR];
    // each tile with the next slice it takes
    let tasks: Vec<Mutex<(Tile<'_>, usize)>> = tiles(products, panels, threads)
        .into_iter()
        .map(|t| Mutex::new((t, 0)))
        .collect();
    let slices = k.div_ceil(KC);
    // claimed in order, slice by slice: both threads work in the same slice (its packed
    // activations shared in L3), the small tasks come last in each, and a thread that ends
    // a slice goes on to the next one instead of waiting for the other
    let next = AtomicUsize::new(0);
    let result = (0..threads).into_par_iter().try_for_each(|_| loop {
        let claim = next.fetch_add(1, Ordering::Relaxed);
        let (slice, t) = (claim / tasks.len().max(1), claim % tasks.len().max(1));
        if slice >= slices {
            return Ok(());
        }
        let Some(task) = tasks.get(t) else {
            return Ok(());
        };
        let k0 = slice * KC;
        let kc = KC.min(k - k0);
        let a = &packed[panels * k0 * MR..panels * (k0 + kc) * MR];
        // the tile's previous slice was claimed earlier; in the rare case that it is still
        // running (or not yet started) on the other thread, wait for it: a tile takes its
        // slices in order, which fixes the order of each output's sum
        let mut task = loop {
            let task = match task.lock() {
                Ok(t) => t,
                Err(poisoned) => poisoned.into_inner(),
            };
            if task.1 == slice {
                break task;
            }
            drop(task);
            std::thread::yield_now();
        };
        let run = SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => tile_product(&mut s, a, k0, kc, fill, &mut task.0, kernel),
            // a task run while this thread's buffers are in use further up its stack
            Err(_) => {
                let s = &mut Scratch::default();
                tile_product(s, a, k0, kc, fill, &mut task.0, kernel)
            }
        });
        task.1 += 1;
        if run.is_err() {
            // the other threads stop at their next claim
            next.store(slices * tasks.len(), Ordering::Relaxed);
            return run;
        }
    });
    drop(tasks);
    if let Ok(mut kept) = PACKED.try_lock() {
        *kept = a;
    }
    result
}

/// One task, one slice: the tile's columns of the weights (columns `k0..k0 + kc` of their
/// rows) dequantized into panels, then every activation panel of the tile (`a`, the
/// slice's packed panels) run along them, in the best kernel the CPU has.
fn tile_product<F>(
    s: &mut Scratch,
    a: &[f32],
    k0: usize,
    kc: usize,
    fill: &F,
    tile: &mut Tile<'_>,
    kernel: Kernel,
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    #[cfg(target_arch = "x86_64")]
    if let (Kernel::Best, Some(simd)) = (kernel, pulp::x86::V3::try_new()) {
        return simd.vectorize(
            #[inline(always)]
            || tile_with(Avx2(simd), s, a, k0, kc, fill, tile),
        );
    }
    tile_with(Portable, s, a, k0, kc, fill, tile)
}

/// The microkernel [`gemm`] runs on this CPU (for the benchmark's report).
pub(super) fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if pulp::x86::V3::try_new().is_some() {
        return "avx2 6x16";
    }
    "portable 6x16"
}

/// [`tile_product`] with microkernel `kern`; inlined into a function compiled for its
/// instruction set, so the weight panels and the output updates are compiled for it too.
#[inline(always)]
fn tile_with<K: Micro, F>(
    kern: K,
    s: &mut Scratch,
    a: &[f32],
    k0: usize,
    kc: usize,
    fill: &F,
    tile: &mut Tile<'_>,
) -> candle_core::Result<()>
where
    F: Fn(usize, usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync,
{
    let nc = tile.nc;
    s.rows.resize(NR * KC, 0.0);
    s.b.resize(KC * NC, 0.0);
    let b = &mut s.b[..nc.div_ceil(NR) * kc * NR];
    for (q, b) in b.chunks_exact_mut(kc * NR).enumerate() {
        let jq = tile.j0 + q * NR;
        let nr = NR.min(nc - q * NR);
        let rows = &mut s.rows[..NR * kc];
        for (r, dst) in rows.chunks_exact_mut(kc).enumerate() {
            if r < nr {
                fill(tile.product, jq + r, k0, dst)?;
            } else {
                dst.fill(0.0);
            }
        }
        kern.transpose(rows, kc, b);
    }
    let b = &s.b[..nc.div_ceil(NR) * kc * NR];
    let a = &a[tile.p0 * kc * MR..];
    let panels = tile.rows.len().div_ceil(MR);
    for (p, (ap, segs)) in a
        .chunks_exact(kc * MR)
        .zip(tile.rows.chunks_mut(MR))
        .enumerate()
    {
        // the panel after this one (none after the tile's last), fetched while this one runs
        let next: &[f32] = if p + 1 < panels {
            a.get((p + 1) * kc * MR..(p + 2) * kc * MR).unwrap_or(&[])
        } else {
            &[]
        };
        // the panel's outputs (a few lines of each row), read and written after its first
        // kernel run: the tile's outputs were last touched a slice ago and are out of L2, and
        // without the hint the update's loads waited on them (`perf`, session 16, the 1.1B
        // reference parity: the update's store took 1.7-2.9 % of a product's samples
        // without it, 0.7-1.6 % with it)
        for seg in segs.iter() {
            for v in seg.iter().step_by(16) {
                kern.prefetch(v);
            }
        }
        let ap = ap.as_chunks::<MR>().0;
        for (q, bq) in b.chunks_exact(kc * NR).enumerate() {
            let acc = kern.run(ap, bq.as_chunks::<NR>().0, next);
            update(&acc, segs, q * NR, NR.min(nc - q * NR), k0 == 0);
        }
    }
    Ok(())
}

/// Add (or, for the first slice, store) the sums `acc` into columns `c0..c0 + nr` of the
/// output rows `segs` (at most [`MR`] of them).
#[inline(always)]
fn update(acc: &[[f32; NR]; MR], segs: &mut [&mut [f32]], c0: usize, nr: usize, first: bool) {
    for (sums, seg) in acc.iter().zip(segs.iter_mut()) {
        let o = &mut seg[c0..c0 + nr];
        if first {
            match <&mut [f32; NR]>::try_from(&mut *o) {
                // a whole panel: a copy of known length, two vector stores (a copy of `nr`
                // values is a call to `memmove`)
                Ok(whole) => *whole = *sums,
                Err(_) => o.copy_from_slice(&sums[..nr]),
            }
        } else {
            for (o, v) in o.iter_mut().zip(sums) {
                *o += v;
            }
        }
    }
}

/// Columns `k0..k0 + kc` of activation panel `p` (rows `p * MR..`) of `x` (`m` rows, `k`
/// wide) as `[kc][MR]`, the rows past `m` zero.
fn pack_panel(x: &[f32], k: usize, m: usize, p: usize, k0: usize, kc: usize, panel: &mut [f32]) {
    let panel = panel.as_chunks_mut::<MR>().0;
    for i in 0..MR {
        let r = p * MR + i;
        if r < m {
            let src = &x[r * k + k0..r * k + k0 + kc];
            for (dst, &v) in panel.iter_mut().zip(src) {
                dst[i] = v;
            }
        } else {
            for dst in panel.iter_mut() {
                dst[i] = 0.0;
            }
        }
    }
}

/// `rows [NR][kc]` to `b [kc][NR]`, one value at a time.
#[inline(always)]
fn transpose_rows(rows: &[f32], kc: usize, b: &mut [f32]) {
    let src: [&[f32]; NR] = std::array::from_fn(|r| &rows[r * kc..(r + 1) * kc]);
    for (c, dst) in b.as_chunks_mut::<NR>().0.iter_mut().enumerate().take(kc) {
        for (d, s) in dst.iter_mut().zip(&src) {
            *d = s[c];
        }
    }
}

/// An `MR x NR` microkernel: `out[i][l] = sum over c of a[c][i] * b[c][l]`, a fused
/// multiply-add chain from zero in `c` order. `next` is the activation panel the next call
/// will read, which a kernel may ask the cache for meanwhile (it is not read).
trait Micro: Copy {
    fn run(self, a: &[[f32; MR]], b: &[[f32; NR]], next: &[f32]) -> [[f32; NR]; MR];

    /// `rows [NR][kc]` to `b [kc][NR]` (values moved, not computed).
    #[inline(always)]
    fn transpose(self, rows: &[f32], kc: usize, b: &mut [f32]) {
        transpose_rows(rows, kc, b);
    }

    /// Asks the cache for the line of `v` (a hint, where the CPU has one).
    #[inline(always)]
    fn prefetch(self, _v: &f32) {}
}

/// The kernel for any CPU: the same fused operations as [`Avx2`], one lane at a time.
#[derive(Clone, Copy)]
struct Portable;

impl Micro for Portable {
    #[inline(always)]
    fn run(self, a: &[[f32; MR]], b: &[[f32; NR]], _next: &[f32]) -> [[f32; NR]; MR] {
        portable_tile(a, b)
    }
}

/// `out[i][l] = sum over c of a[c][i] * b[c][l]`, each a fused multiply-add chain from zero
/// in `c` order, one lane at a time: the portable twin of an `R x C` AVX2 microkernel
/// (this GEMM's, and the fused attention's score tiles).
#[inline(always)]
pub(super) fn portable_tile<const R: usize, const C: usize>(
    a: &[[f32; R]],
    b: &[[f32; C]],
) -> [[f32; C]; R] {
    let mut acc = [[0f32; C]; R];
    for (a, b) in a.iter().zip(b) {
        for (acc, &ai) in acc.iter_mut().zip(a) {
            for (s, &bl) in acc.iter_mut().zip(b) {
                *s = ai.mul_add(bl, *s);
            }
        }
    }
    acc
}

/// The AVX2 + FMA kernel: 12 accumulators of 8 lanes, two weight vectors and one broadcast
/// activation per step.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2(pulp::x86::V3);

#[cfg(target_arch = "x86_64")]
impl Micro for Avx2 {
    #[inline(always)]
    fn run(self, a: &[[f32; MR]], b: &[[f32; NR]], next: &[f32]) -> [[f32; NR]; MR] {
        use std::arch::x86_64::{__m256, _MM_HINT_T0};
        let Avx2(simd) = self;
        let (avx, fma) = (simd.avx, simd.fma);
        let mut acc = [[avx._mm256_setzero_ps(); 2]; MR];
        let mut step = |a: &[f32; MR], b: &[f32; NR]| {
            let [b0, b1]: [__m256; 2] = pulp::bytemuck::cast(*b);
            for (acc, ai) in acc.iter_mut().zip(a) {
                let ai = avx._mm256_broadcast_ss(ai);
                acc[0] = fma._mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = fma._mm256_fmadd_ps(ai, b1, acc[1]);
            }
        };
        // Eight steps read 8 x MR values of the panel (three cache lines); meanwhile the
        // same three lines of the next panel are asked for. The hardware prefetcher alone
        // leaves the first loads of each new panel waiting on L3: measured on Zen 4 (C, this
        // loop, m = 3330, KC = 1024) 93-99 GFLOP/s a core without, 103-109 with.
        let (a8, a_rest) = a.as_chunks::<8>();
        let (b8, b_rest) = b.as_chunks::<8>();
        for (g, (a8, b8)) in a8.iter().zip(b8).enumerate() {
            for line in [0, 16, 32] {
                if let Some(v) = next.get(g * 8 * MR + line) {
                    simd.sse
                        ._mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(v).cast());
                }
            }
            for (a, b) in a8.iter().zip(b8) {
                step(a, b);
            }
        }
        for (a, b) in a_rest.iter().zip(b_rest) {
            step(a, b);
        }
        pulp::bytemuck::cast(acc)
    }

    #[inline(always)]
    fn prefetch(self, v: &f32) {
        use std::arch::x86_64::_MM_HINT_T0;
        self.0
            .sse
            ._mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(v).cast());
    }

    /// Eight columns of eight rows at a time, transposed in registers by the usual
    /// unpack / shuffle / lane-permute sequence.
    #[inline(always)]
    fn transpose(self, rows: &[f32], kc: usize, b: &mut [f32]) {
        use std::arch::x86_64::__m256;
        if !kc.is_multiple_of(8) {
            return transpose_rows(rows, kc, b);
        }
        let avx = self.0.avx;
        let src: [&[[f32; 8]]; NR] =
            std::array::from_fn(|r| rows[r * kc..(r + 1) * kc].as_chunks::<8>().0);
        let dst = b.as_chunks_mut::<NR>().0;
        for (g, dst) in dst.chunks_exact_mut(8).enumerate().take(kc / 8) {
            for h in 0..NR / 8 {
                let v: [__m256; 8] =
                    std::array::from_fn(|r| pulp::bytemuck::cast(src[8 * h + r][g]));
                let t: [__m256; 8] = std::array::from_fn(|i| {
                    let (x, y) = (v[2 * (i / 2)], v[2 * (i / 2) + 1]);
                    if i % 2 == 0 {
                        avx._mm256_unpacklo_ps(x, y)
                    } else {
                        avx._mm256_unpackhi_ps(x, y)
                    }
                });
                // s[0..4]: columns 0, 1, 2, 3 (and 4..8 in the high lanes) of rows 0-3;
                // s[4..8] the same of rows 4-7
                let s: [__m256; 8] = std::array::from_fn(|i| {
                    let base = 4 * (i / 4);
                    let (x, y) = (t[base + (i % 4) / 2], t[base + 2 + (i % 4) / 2]);
                    if i % 2 == 0 {
                        avx._mm256_shuffle_ps::<0x44>(x, y)
                    } else {
                        avx._mm256_shuffle_ps::<0xEE>(x, y)
                    }
                });
                for c in 0..8 {
                    let o = if c < 4 {
                        avx._mm256_permute2f128_ps::<0x20>(s[c], s[c + 4])
                    } else {
                        avx._mm256_permute2f128_ps::<0x31>(s[c - 4], s[c])
                    };
                    let o: [f32; 8] = pulp::bytemuck::cast(o);
                    dst[c][8 * h..8 * h + 8].copy_from_slice(&o);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_noise::noise;

    fn run(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let fill = |j: usize, k0: usize, dst: &mut [f32]| {
            dst.copy_from_slice(&w[j * k + k0..j * k + k0 + dst.len()]);
            Ok(())
        };
        let mut out = vec![f32::NAN; m * n];
        gemm(x, m, k, n, &fill, &mut out).unwrap();
        out
    }

    #[test]
    fn products_match_f64_sums_for_odd_shapes() {
        // shapes off every block size: m not a multiple of MR or of a chunk, n of NR, k of
        // KC; a tiny k; m = 8; more than one chunk and one KC slice
        for (m, n, k) in [
            (8, 16, 256),
            (7, 5, 3),
            (13, 33, 1),
            (8, 17, 300),
            (131, 47, 520),
            (200, 70, 96),
            (1100, 19, 64),
        ] {
            let x = noise(m as u64, m * k);
            let w = noise(1000 + n as u64, n * k);
            let got = run(&x, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut size) = (0f64, 0f64);
                    for c in 0..k {
                        let p = f64::from(x[i * k + c]) * f64::from(w[j * k + c]);
                        want += p;
                        size += p.abs();
                    }
                    let d = (f64::from(got[i * n + j]) - want).abs();
                    assert!(d <= 1e-6 * size, "{m}x{n}x{k} ({i},{j}): {d:e} of {size:e}");
                }
            }
        }
    }

    #[test]
    fn bits_do_not_depend_on_the_thread_count_or_kernel() {
        // n = 37: three panels, the last partial; n = 100: two NC blocks, the second a
        // single panel
        for n in [37, 100] {
            let (m, k) = (700, 1100);
            let x = noise(5, m * k);
            let w = noise(6, n * k);
            let mut results = Vec::new();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                results.push(pool.install(|| run(&x, &w, m, k, n)));
            }
            assert_eq!(results[0], results[1]);
            assert_eq!(results[0], results[2]);
            // the portable kernel gives the same bits as the one `gemm` ran
            let fill = |j: usize, k0: usize, dst: &mut [f32]| {
                dst.copy_from_slice(&w[j * k + k0..j * k + k0 + dst.len()]);
                Ok(())
            };
            let mut portable = vec![f32::NAN; m * n];
            let mut products = [Product {
                n,
                out: &mut portable,
            }];
            let fill = |_: usize, j: usize, k0: usize, dst: &mut [f32]| fill(j, k0, dst);
            group_product(&x, m, k, &mut products, &fill, Kernel::Portable).unwrap();
            assert_eq!(portable, results[0], "portable, n = {n}");
        }
    }

    #[test]
    fn tiles_cover_the_outputs_once_in_whole_panels() {
        // wide products: NC-column blocks of all the rows; narrow ones cut the rows too
        assert_eq!(chunk_panels(555, 88, 2), 555);
        assert_eq!(chunk_panels(555, 4, 2), 139);
        assert_eq!(chunk_panels(2, 1, 8), MIN_CHUNK_ROWS.div_ceil(MR));
        for (m, ns, threads) in [
            (13, vec![70], 1),
            (700, vec![37], 2),
            (6, vec![64], 3),
            (1024, vec![2048, 256, 256], 2),
            (500, vec![100, 1, 700], 4),
        ] {
            let mut outs: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0f32; m * n]).collect();
            let mut products: Vec<Product<'_>> = outs
                .iter_mut()
                .zip(&ns)
                .map(|(out, &n)| Product { n, out })
                .collect();
            let panels = m.div_ceil(MR);
            let tiles = tiles(&mut products, panels, threads);
            let blocks: usize = ns.iter().map(|n| n.div_ceil(NC)).sum();
            let full = chunk_panels(panels, blocks, threads) * MR;
            for tile in tiles {
                assert_eq!(tile.j0 % NC, 0);
                assert!(tile.rows.len() <= full);
                for row in tile.rows {
                    assert_eq!(row.len(), tile.nc);
                    row.iter_mut().for_each(|v| *v += 1.0);
                }
            }
            for (out, n) in outs.iter().zip(&ns) {
                assert!(
                    out.iter().all(|&v| v == 1.0),
                    "{m}x{n} on {threads} threads"
                );
            }
        }
        let x = [1f32; 6];
        assert!(gemm(&x, 2, 3, 1, &|_, _, _| Ok(()), &mut [0.0; 3]).is_err());
    }

    #[test]
    fn several_products_give_the_bits_of_each_alone() {
        let (m, k) = (300, 1500);
        let ns = [70, 16, 130];
        let x = noise(10, m * k);
        let ws: Vec<Vec<f32>> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| noise(20 + i as u64, n * k))
            .collect();
        let mut outs: Vec<Vec<f32>> = ns.iter().map(|&n| vec![f32::NAN; m * n]).collect();
        let mut products: Vec<Product<'_>> = outs
            .iter_mut()
            .zip(&ns)
            .map(|(out, &n)| Product { n, out })
            .collect();
        let fill = |p: usize, j: usize, k0: usize, dst: &mut [f32]| {
            dst.copy_from_slice(&ws[p][j * k + k0..j * k + k0 + dst.len()]);
            Ok(())
        };
        gemm_many(&x, m, k, &mut products, &fill).unwrap();
        for ((out, w), &n) in outs.iter().zip(&ws).zip(&ns) {
            assert_eq!(out, &run(&x, w, m, k, n), "n = {n}");
        }
    }

    #[test]
    fn groups_of_rows_give_the_bits_of_one_group() {
        // more rows than a group: the groups run one after the other
        let (m, k, n) = (100, 40, 20);
        let x = noise(8, m * k);
        let w = noise(9, n * k);
        let fill = |_: usize, j: usize, k0: usize, dst: &mut [f32]| {
            dst.copy_from_slice(&w[j * k + k0..j * k + k0 + dst.len()]);
            Ok(())
        };
        let mut grouped = vec![f32::NAN; m * n];
        let mut products = [Product {
            n,
            out: &mut grouped,
        }];
        // 12 rows' worth of packed activations: 9 groups
        in_groups(&x, m, k, &mut products, &fill, 12 * k * 4).unwrap();
        assert_eq!(run(&x, &w, m, k, n), grouped);
    }
}
