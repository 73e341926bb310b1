//! What the tests (and the local run) share, without AWS: a crate's tests can use it without
//! compiling an SDK.
//!
//! - [`python`]: the project's Python environment (`.venv`, made by `scripts/setup`).
//! - [`test_model`]: the generated ResNet18-architecture ONNX model with deterministic random
//!   weights, and its spec.
//! - [`sample`]: the generated sample images (families of pictures, header-only bombs).
//! - [`peak_memory`]: a command's peak resident set size.
//! - [`cosine`]: cosine similarity of two vectors; [`run_ok`]: a command that must succeed.
//! - For the benchmarks: [`median`] of timed runs, [`jpegs_under`] a directory of photos.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

pub mod peak_memory;
pub mod python;
pub mod sample;
pub mod test_model;

/// Cosine similarity of `a` and `b`, in f64 (0 if either is all zeros). Panics if their lengths
/// differ: a test comparing vectors of two lengths is wrong already.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// The median of `v` (the mean of the middle two for an even count). Panics if `v` is empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "the median of no runs");
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Every `.jpg`/`.jpeg` file under `dir` (recursively, any case), in path order; none if `dir`
/// cannot be read.
pub fn jpegs_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    let mut out = Vec::new();
    for p in entries {
        if p.is_dir() {
            out.extend(jpegs_under(&p));
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        {
            out.push(p);
        }
    }
    out
}

/// Runs `command` and returns its output; panics with `what` and the command's stderr if it
/// did not exit 0.
pub fn run_ok(command: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {command:?} did not start: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
