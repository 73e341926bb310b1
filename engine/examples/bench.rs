//! Engine benchmark: decode+preprocess and inference, against the Python reference pipeline
//! (tests/reference/bench.py: PIL + numpy + onnxruntime) on the same images in the same run.
//!
//! ```text
//! cargo run --release -p embatch-engine --example bench -- [--images DIR] [--spec SPEC.toml]
//! ```
//! Without `--images`, synthetic photos are generated (8 small 500x375, 4 large 4000x3000, 2
//! very large 6000x4000 baseline and 2 progressive JPEGs); without `--spec`, the generated
//! ResNet18-architecture test model is used (same graph and cost as the real ResNet18).
//! Figures are medians over `--runs` runs, in `--rounds` rounds alternating with the
//! reference. `--decode-only` skips inference. `--conv auto,im2col` (the default) measures
//! each convolution algorithm at every batch size, runs interleaved.
//! Prints a Markdown section for BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use embatch_engine::{ConvAlgorithm, Engine, EngineOptions, Limits, ModelSpec, Prepared};
use embatch_testkit::{jpegs_under, median, python, test_model};
use rayon::prelude::*;

#[derive(Parser)]
struct Args {
    /// Model spec (default: the generated ResNet18 test model).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Use this model file instead of the spec's `file`.
    #[arg(long)]
    model_file: Option<PathBuf>,
    /// A directory of photos (searched recursively for .jpg/.jpeg), in sets by size: small
    /// (longer side <= 1000 px), large (1001-5000), very large (> 5000, baseline and
    /// progressive apart). Default: generated synthetic photos.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Decode and preprocess only: no inference figures.
    #[arg(long)]
    decode_only: bool,
    /// Timed runs per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Rounds of ours then the reference's (each `--runs` runs), alternating, for the decode
    /// and the inference figures, so that load on the shared machine falls on both; figures
    /// are medians over the rounds, ratios the median of the rounds' ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Images per inference run.
    #[arg(long, default_value_t = 16)]
    inference_images: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    batches: Vec<usize>,
    /// Multiply-adds per image, for the fraction of fp32 peak (default: 1.814e9 for specs
    /// whose name contains "resnet18").
    #[arg(long)]
    gmac: Option<f64>,
    /// Measured fp32 FMA peak per core in GFLOP/s.
    #[arg(long, default_value_t = 213.0)]
    peak_gflops_per_core: f64,
    /// Skip the Python reference.
    #[arg(long)]
    no_python: bool,
    /// Convolution algorithms to measure, each at every batch size (the first is the headline).
    #[arg(long, value_delimiter = ',', default_value = "auto,im2col")]
    conv: Vec<ConvAlgorithm>,
}

/// The image sets, in report order.
const SETS: [&str; 4] = ["small", "large", "very large", "very large progressive"];

/// Which set a JPEG of `w` x `h` belongs to.
fn set_of(w: u32, h: u32, progressive: bool) -> &'static str {
    match w.max(h) {
        0..=1000 => "small",
        1001..=5000 => "large",
        _ if progressive => "very large progressive",
        _ => "very large",
    }
}

/// At most 40 small and 12 of each larger set.
fn classify(paths: Vec<PathBuf>) -> Vec<(&'static str, Vec<PathBuf>)> {
    let mut sets: Vec<(&'static str, Vec<PathBuf>)> =
        SETS.iter().map(|s| (*s, Vec::new())).collect();
    for p in paths {
        let Some(header) = std::fs::read(&p)
            .ok()
            .and_then(|b| turbojpeg::read_header(&b).ok())
        else {
            continue;
        };
        let (w, h) = (header.width as u32, header.height as u32);
        let name = set_of(w, h, header.is_progressive);
        let set = &mut sets.iter_mut().find(|(n, _)| *n == name).unwrap().1;
        if set.len() < if name == "small" { 40 } else { 12 } {
            set.push(p);
        }
    }
    sets.retain(|(_, v)| !v.is_empty());
    sets
}

/// Median ms per image of `prepare` on one thread.
fn time_prepare(engine: &Engine, files: &[Vec<u8>], runs: usize) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        let limits = Limits::default();
        for b in files {
            engine.prepare(b, &limits).expect("warm-up prepare");
        }
        median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    for b in files {
                        engine.prepare(b, &limits).expect("prepare");
                    }
                    t.elapsed().as_secs_f64() * 1000.0 / files.len() as f64
                })
                .collect(),
        )
    })
}

/// Median images/s of `embed` on `threads` threads for each engine, each embedding batches of
/// its preferred size: runs interleaved (one pass of every engine per round), so that load on
/// the shared machine falls on all of them alike.
fn time_infer(engines: &[Engine], inputs: &[Prepared], threads: usize, runs: usize) -> Vec<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        for e in engines {
            // Warm-up on every thread: the Winograd scratch buffers are per thread.
            inputs.par_chunks(e.preferred_batch()).for_each(|c| {
                e.embed(c).expect("warm-up");
            });
        }
        let mut rates = vec![Vec::new(); engines.len()];
        for _ in 0..runs {
            for (e, r) in engines.iter().zip(&mut rates) {
                let t = Instant::now();
                inputs.par_chunks(e.preferred_batch()).for_each(|c| {
                    e.embed(c).expect("embed");
                });
                r.push(inputs.len() as f64 / t.elapsed().as_secs_f64());
            }
        }
        rates.into_iter().map(median).collect()
    })
}

/// Medians over the rounds of our figure, the reference's, and the rounds' own
/// `ratio(ours, theirs)`; the last two `None` where a round lacks the reference's figure.
fn across_rounds(
    pairs: &[(f64, Option<f64>)],
    ratio: impl Fn(f64, f64) -> f64,
) -> (f64, Option<f64>, Option<f64>) {
    let ours = median(pairs.iter().map(|p| p.0).collect());
    let theirs: Option<Vec<f64>> = pairs.iter().map(|p| p.1).collect();
    let ratios: Option<Vec<f64>> = pairs.iter().map(|&(o, t)| t.map(|t| ratio(o, t))).collect();
    (ours, theirs.map(median), ratios.map(median))
}

/// onnxruntime's images/s in one round's figures: one thread, or the best of batch 1 and 8 on
/// all cores.
fn ort_figure(figures: Option<&serde_json::Value>, all_cores: bool) -> Option<f64> {
    let v = figures?;
    if !all_cores {
        return v["infer_img_s_1thread"].as_f64();
    }
    let (a, b) = (
        v["infer_img_s_all_cores_batch1"].as_f64(),
        v["infer_img_s_all_cores_batch8"].as_f64(),
    );
    a.zip(b).map(|(a, b)| a.max(b)).or(a).or(b)
}

/// Our inference rate at one batch size and algorithm, images/s.
struct Figure {
    batch: usize,
    conv: ConvAlgorithm,
    /// On one thread.
    one: f64,
    /// On every core.
    all: f64,
}

/// One round of our inference figures: every batch size, every algorithm.
fn infer_figures(
    args: &Args,
    spec: &ModelSpec,
    inputs: &[Prepared],
    cores: usize,
) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for &batch in &args.batches {
        let engines: Vec<Engine> = args
            .conv
            .iter()
            .map(|&conv| Engine::load_with(spec, EngineOptions { batch, conv }))
            .collect::<Result<_, _>>()?;
        let one = time_infer(&engines, inputs, 1, args.runs);
        let all = time_infer(&engines, inputs, cores, args.runs);
        for ((&conv, one), all) in args.conv.iter().zip(one).zip(all) {
            eprintln!(
                "batch {batch}, {conv}: {one:.1} img/s on 1 thread, {all:.1} img/s on {cores}"
            );
            figures.push(Figure {
                batch,
                conv,
                one,
                all,
            });
        }
    }
    Ok(figures)
}

/// Which half of the Python reference to run.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Decode,
    Inference,
}

/// Runs tests/reference/bench.py for one part; its JSON figures.
fn reference(
    args: &Args,
    spec_path: &Path,
    spec: &ModelSpec,
    sets: &[(&str, Vec<PathBuf>)],
    part: Part,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let out_json = dir.path().join("py.json");
    let mut cmd = Command::new(python::interpreter()?);
    cmd.arg(python::workspace_root().join("tests/reference/bench.py"))
        .arg(spec_path)
        .arg(&out_json)
        .arg("--runs")
        .arg(args.runs.to_string())
        .arg("--inference-images")
        .arg(args.inference_images.to_string())
        .arg("--model")
        .arg(&spec.file)
        .arg(match part {
            Part::Decode => "--no-inference",
            Part::Inference => "--no-prepare",
        });
    for (name, files) in sets {
        cmd.arg("--set").arg(name).args(files);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "bench.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(&std::fs::read_to_string(&out_json)?)?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec_path = match &args.spec {
        Some(p) => p.clone(),
        None => test_model::resnet18_spec()?,
    };
    let mut spec = ModelSpec::from_path(&spec_path)?;
    if let Some(f) = &args.model_file {
        spec = spec.with_file(f);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let _tmp;
    let sets = match &args.images {
        Some(dir) => classify(jpegs_under(dir)),
        None => {
            let dir = tempfile::tempdir()?;
            let out = Command::new(python::interpreter()?)
                .arg(python::workspace_root().join("tests/reference/make_images.py"))
                .arg(dir.path())
                .arg("--bench")
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let all = jpegs_under(dir.path());
            _tmp = dir;
            classify(all)
        }
    };
    anyhow::ensure!(!sets.is_empty(), "no usable images");
    let bytes: Vec<Vec<Vec<u8>>> = sets
        .iter()
        .map(|(_, v)| v.iter().map(std::fs::read).collect::<std::io::Result<_>>())
        .collect::<std::io::Result<_>>()?;

    let engine = Engine::load(&spec)?;
    let counts: Vec<String> = sets
        .iter()
        .map(|(n, v)| format!("{} {n}", v.len()))
        .collect();
    eprintln!(
        "model {} ({}), embedding tensor {}, images: {}, {} cores",
        spec.name,
        spec.file.display(),
        engine.embedding_tensor(),
        counts.join(", "),
        cores
    );
    // Decode rounds: ours, then PIL's, `--rounds` times.
    let mut decode_rounds: Vec<(Vec<f64>, Option<serde_json::Value>)> = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let ours = bytes
            .iter()
            .map(|files| time_prepare(&engine, files, args.runs))
            .collect();
        let pil = if args.no_python {
            None
        } else {
            Some(reference(&args, &spec_path, &spec, &sets, Part::Decode)?)
        };
        decode_rounds.push((ours, pil));
    }
    println!("### Engine benchmark: {} ({} cores)\n", spec.name, cores);
    println!("| figure | embatch (Rust) | Python reference | ratio (ref / ours for time, ours / ref for rate) |");
    println!("|---|---|---|---|");
    let fmt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2} {unit}"));
    let ratio_fmt = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
    for (i, (label, files)) in sets.iter().enumerate() {
        let variant = |name: &str| {
            let key = format!("prepare_ms_{label}_{name}");
            let pairs: Vec<(f64, Option<f64>)> = decode_rounds
                .iter()
                .map(|(ours, pil)| (ours[i], pil.as_ref().and_then(|v| v[key.as_str()].as_f64())))
                .collect();
            across_rounds(&pairs, |ours, pil| pil / ours)
        };
        let [draft, draft1, full] = ["draft", "draft1x", "full"].map(variant);
        println!(
            "| decode+preprocess, {label} ({} JPEGs), ms/image, 1 thread | {:.2} ms | PIL draft() 2x: {} / draft() 1x: {} / full decode: {} | {} / {} / {} |",
            files.len(),
            draft.0,
            fmt(draft.1, "ms"),
            fmt(draft1.1, "ms"),
            fmt(full.1, "ms"),
            ratio_fmt(draft.2),
            ratio_fmt(draft1.2),
            ratio_fmt(full.2)
        );
    }
    if args.decode_only {
        return Ok(());
    }

    let one = engine.prepare(&bytes[0][0], &Limits::default())?;
    let inputs: Vec<Prepared> = (0..args.inference_images)
        .map(|k| {
            let mut p = one.clone();
            p.tensor.iter_mut().enumerate().for_each(|(i, v)| {
                *v += ((i * 31 + k * 17) % 101) as f32 * 1e-4;
            });
            p
        })
        .collect();
    // Inference rounds: ours at every batch size and algorithm, then onnxruntime's.
    let mut rounds: Vec<(Vec<Figure>, Option<serde_json::Value>)> = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let ours = infer_figures(&args, &spec, &inputs, cores)?;
        let ort = if args.no_python {
            None
        } else {
            Some(reference(&args, &spec_path, &spec, &sets, Part::Inference)?)
        };
        rounds.push((ours, ort));
    }
    // Figure i over the rounds, on one thread or on all cores: (ours, onnxruntime, ratio).
    let summary = |i: usize, all_cores: bool| {
        let pairs: Vec<(f64, Option<f64>)> = rounds
            .iter()
            .map(|(ours, ort)| {
                let f = &ours[i];
                (
                    if all_cores { f.all } else { f.one },
                    ort_figure(ort.as_ref(), all_cores),
                )
            })
            .collect();
        across_rounds(&pairs, |ours, ort| ours / ort)
    };
    let headline = rounds[0]
        .0
        .iter()
        .position(|f| f.batch == engine.preferred_batch())
        .unwrap_or(0);
    let (one_thread, ort1, ratio1) = summary(headline, false);
    let (all_cores, ortn, ration) = summary(headline, true);

    let gmac = args
        .gmac
        .or_else(|| spec.name.contains("resnet18").then_some(1.814e9));
    println!(
        "| inference, img/s, 1 core (batch {}) | {one_thread:.1} | onnxruntime: {} | {} |",
        engine.preferred_batch(),
        fmt(ort1, ""),
        ratio_fmt(ratio1)
    );
    println!(
        "| inference, img/s, all {cores} cores | {all_cores:.1} | onnxruntime (best of batch 1/8): {} | {} |",
        fmt(ortn, ""),
        ratio_fmt(ration)
    );
    if let Some(g) = gmac {
        let frac = |rate: f64| rate * g * 2.0 / (args.peak_gflops_per_core * 1e9);
        println!(
            "| fraction of fp32 peak per core ({:.3} GMAC/img, {} GFLOP/s/core) | {:.1} % | {} | |",
            g / 1e9,
            args.peak_gflops_per_core,
            100.0 * frac(one_thread),
            ort1.map_or("-".into(), |r| format!("{:.1} %", 100.0 * frac(r)))
        );
    }
    println!("\nBatch size and convolution algorithm (this engine): images/s on 1 thread / on {cores} threads, against onnxruntime\n");
    println!("| batch | convolutions | 1 thread | {cores} threads | 1 thread / onnxruntime |");
    println!("|---|---|---|---|---|");
    for (i, f) in rounds[0].0.iter().enumerate() {
        let ((one, _, ratio), (all, ..)) = (summary(i, false), summary(i, true));
        println!(
            "| {} | {} | {one:.1} | {all:.1} | {} |",
            f.batch,
            f.conv,
            ratio_fmt(ratio)
        );
    }
    Ok(())
}
