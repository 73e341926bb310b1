//! Quality report: do the embeddings carry meaning? Leave-one-out 1-nearest-neighbour
//! accuracy (cosine) over a labelled photo folder, where an image's label is the name of its
//! parent directory.
//!
//! ```text
//! cargo run --release -p embatch-engine --example quality -- \
//!     --spec models/mobilenetv2-features.toml --images ../shared/corpus/hymenoptera [--python [--draft]]
//! ```
//! Only `.jpg`/`.jpeg` files are scored; every other file is prepared too and its outcome
//! listed (a real-world bad input shows how failures are reported). `--python` also runs the
//! Python reference pipeline (tests/reference/reference.py) on the same JPEGs and reports its
//! accuracy and the cosine between its vectors and ours.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use embatch_engine::{Engine, Limits, ModelSpec};
use embatch_testkit::python;
use rayon::prelude::*;

#[derive(Parser)]
struct Args {
    /// Model spec.
    #[arg(long)]
    spec: PathBuf,
    /// Use this model file instead of the spec's `file`.
    #[arg(long)]
    model_file: Option<PathBuf>,
    /// Labelled photos: <dir>/**/<label>/<image>.
    #[arg(long)]
    images: PathBuf,
    /// Also score the Python reference pipeline.
    #[arg(long)]
    python: bool,
    /// With `--python`: the reference decodes JPEGs with PIL's `draft()` at the engine's margin
    /// (libjpeg-turbo's DCT scaling, shorter side kept >= 2 x the resize target), not fully.
    #[arg(long, requires = "python")]
    draft: bool,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn is_jpeg(p: &Path) -> bool {
    p.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
}

fn label(p: &Path) -> String {
    p.parent()
        .and_then(Path::file_name)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

/// Leave-one-out 1-NN accuracy with cosine similarity.
fn loo_1nn(vectors: &[Vec<f32>], labels: &[String]) -> f64 {
    let unit: Vec<Vec<f32>> = vectors.iter().map(|v| normalised(v)).collect();
    let correct = (0..unit.len())
        .into_par_iter()
        .filter(|&i| {
            let best = (0..unit.len())
                .filter(|&j| j != i)
                .max_by(|&a, &b| {
                    let da: f32 = unit[i].iter().zip(&unit[a]).map(|(x, y)| x * y).sum();
                    let db: f32 = unit[i].iter().zip(&unit[b]).map(|(x, y)| x * y).sum();
                    da.total_cmp(&db)
                })
                .expect("at least two images");
            labels[best] == labels[i]
        })
        .count();
    correct as f64 / unit.len() as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut spec = ModelSpec::from_path(&args.spec)?;
    if let Some(f) = &args.model_file {
        spec = spec.with_file(f);
    }
    let engine = Engine::load(&spec)?;
    let mut all = Vec::new();
    files(&args.images, &mut all);
    all.sort();
    let limits = Limits::default();
    let results: Vec<_> = all
        .par_iter()
        .map(|p| {
            let r = std::fs::read(p)
                .map_err(|e| format!("read: {e}"))
                .and_then(|b| {
                    engine
                        .prepare(&b, &limits)
                        .map_err(|e| format!("{} ({e})", e.kind()))
                })
                .and_then(|prep| {
                    engine
                        .embed(std::slice::from_ref(&prep))
                        .map(|mut v| v.remove(0))
                        .map_err(|e| e.to_string())
                });
            (p.clone(), r)
        })
        .collect();
    let (mut vectors, mut labels, mut paths) = (Vec::new(), Vec::new(), Vec::new());
    for (p, r) in &results {
        match (is_jpeg(p), r) {
            (true, Ok(v)) => {
                vectors.push(v.clone());
                labels.push(label(p));
                paths.push(p.clone());
            }
            (true, Err(e)) => println!("JPEG failed: {}: {e}", p.display()),
            (false, outcome) => println!(
                "not scored (not a JPEG): {}: {}",
                p.display(),
                match outcome {
                    Ok(v) => format!("embedded ({} values)", v.len()),
                    Err(e) => format!("refused: {e}"),
                }
            ),
        }
    }
    let acc = loo_1nn(&vectors, &labels);
    println!(
        "{}: {} JPEGs, {} labels, leave-one-out 1-NN cosine accuracy {acc:.3}",
        spec.name,
        vectors.len(),
        {
            let mut l = labels.clone();
            l.sort();
            l.dedup();
            l.len()
        }
    );

    if args.python {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("ref.json");
        let mut cmd = Command::new(python::interpreter()?);
        cmd.arg(python::workspace_root().join("tests/reference/reference.py"))
            .arg("images")
            .arg(&args.spec)
            .arg(&out)
            .args(&paths)
            .arg("--model")
            .arg(&spec.file);
        if args.draft {
            cmd.arg("--draft");
        }
        let o = cmd.output()?;
        anyhow::ensure!(
            o.status.success(),
            "reference.py: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs: Vec<Vec<f32>> = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
        let cos: Vec<f64> = vectors
            .iter()
            .zip(&theirs)
            .map(|(a, b)| {
                let (a, b) = (normalised(a), normalised(b));
                a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum()
            })
            .collect();
        let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
        let mut worst: Vec<(f64, &PathBuf)> = cos.iter().cloned().zip(&paths).collect();
        worst.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (c, p) in worst.iter().take(5) {
            println!("  lowest cosine vs reference: {c:.6} {}", p.display());
        }
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        println!(
            "Python reference (PIL + numpy + onnxruntime): accuracy {:.3}; cosine ours vs reference: mean {mean:.6}, min {min:.6}",
            loo_1nn(&theirs, &labels)
        );
    }
    Ok(())
}
