use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use modelgate::engine::qmatmul::BlockMatrix;
use modelgate::formats::GgmlType;
use std::time::Instant;
fn main() {
    std::env::set_var("CANDLE_NUM_THREADS", "2");
    std::env::set_var("RAYON_NUM_THREADS", "2");
    let (n, k) = (1536usize, 576usize);
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    for (dt, gt) in [(GgmlDType::Q4_1, GgmlType::Q4_1), (GgmlDType::Q8_0, GgmlType::Q8_0)] {
        let qt = QTensor::quantize(&w, dt).unwrap();
        let bytes = qt.data().unwrap().to_vec();
        let bm = BlockMatrix::from_ggml(gt, n, k, &bytes).unwrap();
        let q = QMatMul::from_qtensor(qt).unwrap();
        for m in [1usize, 512] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let reps = if m == 1 { 2000 } else { 10 };
            q.forward(&x).unwrap();
            let t = Instant::now();
            for _ in 0..reps { q.forward(&x).unwrap(); }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!("candle {dt:?} m={m}: {:.3} ms, {:.1} GMAC/s", s * 1e3, (m * n * k) as f64 / s / 1e9);
            let t = Instant::now();
            for _ in 0..reps { std::hint::black_box(bm.matmul(&xv, m)); }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!("ours   {dt:?} m={m}: {:.3} ms, {:.1} GMAC/s", s * 1e3, (m * n * k) as f64 / s / 1e9);
        }
    }
    let wt = w.t().unwrap();
    for m in [1usize, 512] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let reps = if m == 1 { 2000 } else { 10 };
        x.matmul(&wt).unwrap();
        let t = Instant::now();
        for _ in 0..reps { x.matmul(&wt).unwrap(); }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("f32 gemm m={m}: {:.3} ms, {:.1} GMAC/s", s * 1e3, (m * n * k) as f64 / s / 1e9);
    }
}
