//! Per-layer benchmark of the 3×3 stride-1 convolutions of ResNet18: tract's own plan (im2col +
//! matrix multiplication) against Winograd F(2×2) and F(4×4), one-op models, interleaved runs,
//! medians; also the largest absolute difference from tract's output (`winograd::OneConv`).
//!
//! ```text
//! cargo run --release -p embatch-engine --example winograd -- [--runs 9] [--batches 1,8]
//! ```
//! With `--photos DIR`, instead: parity of whole-model plans on real photos (the first
//! `--count` JPEGs under DIR): every convolution algorithm against tract's plan (`im2col`) and
//! against onnxruntime on the same tensors, batch 1 and 8: worst cosine, largest |difference|.
//! `--spec` picks the model (default: the generated ResNet18).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use embatch_engine::winograd::{self, ConvAlgorithm, OneConv};
use embatch_engine::{Engine, EngineOptions, Limits, ModelSpec, Prepared};
use embatch_testkit::{cosine, jpegs_under, median, python, test_model};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::PaddingSpec;

#[derive(Parser)]
struct Args {
    /// Timed runs per figure (the median is reported).
    #[arg(long, default_value_t = 9)]
    runs: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batches: Vec<usize>,
    /// Whole-model parity on the photos under this directory instead of the per-layer table.
    #[arg(long)]
    photos: Option<PathBuf>,
    /// Photos used by `--photos`.
    #[arg(long, default_value_t = 50)]
    count: usize,
    /// Model spec for `--photos` (default: the generated ResNet18 test model).
    #[arg(long)]
    spec: Option<PathBuf>,
}

/// (worst cosine, largest |difference|) of `ours` against `theirs`, vector by vector.
fn compare(ours: &[Vec<f32>], theirs: &[Vec<f32>]) -> (f64, f32) {
    ours.iter().zip(theirs).fold((1.0, 0.0), |(c, d), (a, b)| {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        (c.min(cosine(a, b)), d.max(diff))
    })
}

/// Whole-model parity on real photos: see the module docs.
fn photo_parity(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let spec_path = match &args.spec {
        Some(p) => p.clone(),
        None => test_model::resnet18_spec()?,
    };
    let spec = ModelSpec::from_path(&spec_path)?;
    let files: Vec<PathBuf> = jpegs_under(dir).into_iter().take(args.count).collect();
    let engine = Engine::load_with(
        &spec,
        EngineOptions {
            batch: 1,
            conv: ConvAlgorithm::Im2col,
        },
    )?;
    let images: Vec<Prepared> = files
        .iter()
        .filter_map(|f| {
            engine
                .prepare(&std::fs::read(f).ok()?, &Limits::default())
                .ok()
        })
        .collect();
    anyhow::ensure!(
        !images.is_empty(),
        "no JPEG under {} could be prepared",
        dir.display()
    );
    let tmp = tempfile::tempdir()?;
    let tensors = tmp.path().join("tensors.f32");
    let bytes: Vec<u8> = images
        .iter()
        .flat_map(|p| p.tensor.iter().flat_map(|v| v.to_le_bytes()))
        .collect();
    std::fs::write(&tensors, bytes)?;
    let out = tmp.path().join("ort.json");
    let status = Command::new(python::interpreter()?)
        .arg(python::workspace_root().join("tests/reference/reference.py"))
        .arg("tensors")
        .arg(&spec_path)
        .arg(&tensors)
        .arg(images.len().to_string())
        .arg(&out)
        .status()?;
    anyhow::ensure!(status.success(), "reference.py tensors failed: {status}");
    let ort: Vec<Vec<f32>> = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    println!(
        "{} photos from {}, model {}\n",
        images.len(),
        dir.display(),
        spec.name
    );
    println!("| batch | convolutions | worst cosine vs tract's plan | max abs diff vs tract's plan | worst cosine vs onnxruntime | max abs diff vs onnxruntime |");
    println!("|---|---|---|---|---|---|");
    for &batch in &args.batches {
        let load = |conv| Engine::load_with(&spec, EngineOptions { batch, conv });
        let reference = load(ConvAlgorithm::Im2col)?.embed(&images)?;
        for conv in [
            ConvAlgorithm::Im2col,
            ConvAlgorithm::Auto,
            ConvAlgorithm::F2,
            ConvAlgorithm::F4,
        ] {
            let ours = load(conv)?.embed(&images)?;
            let (c_tract, d_tract) = compare(&ours, &reference);
            let (c_ort, d_ort) = compare(&ours, &ort);
            println!(
                "| {batch} | {conv} | 1 - {:.1e} | {d_tract:.2e} | 1 - {:.1e} | {d_ort:.2e} |",
                1.0 - c_tract,
                1.0 - c_ort
            );
        }
    }
    Ok(())
}

fn plan(conv: &OneConv, algo: ConvAlgorithm) -> TractResult<Arc<TypedSimplePlan>> {
    let mut model = conv.model()?.into_decluttered()?;
    winograd::rewrite(&mut model, algo)?;
    model.into_optimized()?.into_runnable()
}

/// fp32 FMA peak of one core in GFLOP/s: 12 independent AVX2 FMA chains (enough to cover the
/// FMA latency on two pipes), timed over 10^8 iterations, best of 5.
#[cfg(target_arch = "x86_64")]
fn fma_peak() -> Option<f64> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chains(iters: usize) -> f32 {
        let mut acc = [_mm256_set1_ps(1.0); 12];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            acc.iter()
                .fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x)),
        );
        out.iter().sum()
    }
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
        return None;
    }
    let iters = 100_000_000;
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            // SAFETY: AVX2 and FMA are present (checked above).
            std::hint::black_box(unsafe { chains(iters) });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    Some((iters * 12 * 8 * 2) as f64 / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak() -> Option<f64> {
    None
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.photos {
        return photo_parity(&args, dir);
    }
    if let Some(peak) = fma_peak() {
        println!("fp32 FMA peak, one core (AVX2, 12 chains): {peak:.1} GFLOP/s\n");
    }
    let algos = [ConvAlgorithm::Im2col, ConvAlgorithm::F2, ConvAlgorithm::F4];
    println!("| batch | C = K | spatial | im2col ms | F(2x2) ms | F(4x4) ms | F2 speed-up | F4 speed-up | max abs diff F2 / F4 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in &args.batches {
        for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
            let padding = PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]);
            let conv = OneConv::new(n, c, c, (hw, hw), padding);
            let input = conv.input()?;
            let plans: Vec<_> = algos
                .iter()
                .map(|&a| plan(&conv, a))
                .collect::<TractResult<_>>()?;
            let outs: Vec<Vec<f32>> = plans
                .iter()
                .map(|p| {
                    let o = p.run(tvec![input.clone()])?;
                    Ok(o[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
                })
                .collect::<TractResult<_>>()?;
            let diff = |o: &[f32]| {
                o.iter()
                    .zip(&outs[0])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            };
            let mut times = vec![Vec::new(); algos.len()];
            for _ in 0..args.runs {
                for (p, t) in plans.iter().zip(&mut times) {
                    let start = Instant::now();
                    p.run(tvec![input.clone()])?;
                    t.push(start.elapsed().as_secs_f64() * 1000.0);
                }
            }
            let ms: Vec<f64> = times.into_iter().map(median).collect();
            println!(
                "| {n} | {c} | {hw}x{hw} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.1e} / {:.1e} |",
                ms[0], ms[1], ms[2], ms[0] / ms[1], ms[0] / ms[2], diff(&outs[1]), diff(&outs[2])
            );
        }
    }
    Ok(())
}
