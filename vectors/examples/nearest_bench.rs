//! Benchmark of `embatch_records::nearest` (what `embatch-vectors nearest` runs) against
//! numpy on the same matrix, in one invocation: a random `ROWS x DIM` float32 matrix, exact
//! cosine top-`k` for `QUERIES` stored rows, medians of `RUNS` runs each.
//!
//! ```text
//! cargo run --release -p embatch-vectors --example nearest_bench -- [ROWS] [DIM] [RUNS]
//! ```
//! numpy's side (`.venv`, `scripts/setup`): rows normalised once, then per query `unit @ q`
//! and `argpartition` + a sort of the top `k`, the usual way to do it in Python. Its matrix
//! product uses numpy's BLAS, with as many threads as it wants.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use embatch_records::export::{NpyF32Writer, IDS_FILE, VECTORS_FILE};
use embatch_records::nearest::Index;

const QUERIES: usize = 20;
const K: usize = 10;

const NUMPY: &str = r#"
import sys, time
import numpy as np
x = np.load(sys.argv[1])
queries, k, runs = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
step = max(len(unit) // queries, 1)
medians = []
for _ in range(runs):
    t = time.perf_counter()
    for i in range(0, step * queries, step):
        sims = unit @ unit[i]
        sims[i] = -np.inf
        top = np.argpartition(-sims, k)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
    medians.append((time.perf_counter() - t) / queries * 1000)
print(sorted(medians)[len(medians) // 2])
"#;

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(match std::env::args().nth(i) {
            Some(v) => v.parse()?,
            None => default,
        })
    };
    let (rows, dim, runs) = (arg(1, 100_000)?, arg(2, 512)?, arg(3, 5)?);
    let values = matrix(rows, dim);
    let dir = tempfile::tempdir()?;
    write_export(dir.path(), rows, dim, &values)?;

    let built = Instant::now();
    let ids: Vec<String> = (0..rows).map(|i| format!("{i}")).collect();
    let index = Index::from_matrix(ids, dim, values)?;
    let build_ms = built.elapsed().as_secs_f64() * 1000.0;
    let step = (rows / QUERIES).max(1);
    let mut ours = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        for i in (0..step * QUERIES).step_by(step) {
            std::hint::black_box(index.nearest_to(&i.to_string(), K)?);
        }
        ours.push(t.elapsed().as_secs_f64() * 1000.0 / QUERIES as f64);
    }
    ours.sort_by(f64::total_cmp);
    let ours = ours[ours.len() / 2];

    let python = embatch_testkit::python::interpreter()?;
    let out = Command::new(python)
        .args(["-c", NUMPY])
        .arg(dir.path().join(VECTORS_FILE))
        .args([QUERIES, K, runs].map(|n| n.to_string()))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "numpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let numpy: f64 = String::from_utf8(out.stdout)?.trim().parse()?;
    println!(
        "{rows} x {dim}, k = {K}, {QUERIES} queries, median of {runs} runs, {} threads",
        rayon::current_num_threads()
    );
    println!("  index built (normalised) in {build_ms:.0} ms");
    println!("  embatch_records::nearest  {ours:8.2} ms/query");
    println!("  numpy (BLAS matvec)       {numpy:8.2} ms/query");
    println!("  ratio (numpy / ours)      {:8.2}x", numpy / ours);
    Ok(())
}

/// Pseudo-random values in [-1, 1).
fn matrix(rows: usize, dim: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..rows * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn write_export(
    dir: &std::path::Path,
    rows: usize,
    dim: usize,
    values: &[f32],
) -> anyhow::Result<()> {
    let mut npy = NpyF32Writer::new(std::fs::File::create(dir.join(VECTORS_FILE))?)?;
    for row in values.chunks_exact(dim) {
        npy.push_row(row)?.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    npy.finish()?;
    let mut ids = std::io::BufWriter::new(std::fs::File::create(dir.join(IDS_FILE))?);
    for i in 0..rows {
        writeln!(ids, "\"{i}\"")?;
    }
    Ok(())
}
