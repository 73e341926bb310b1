//! Benchmark of `embatch-vectors export` (npy and Parquet) against what a user writes by hand
//! in Python, in one invocation on the same emulator table: boto3's Scan paginator, every
//! vector kept, then one `pyarrow.parquet.write_table`. Peak RSS and wall time of each
//! process, medians of `RUNS` runs.
//!
//! ```text
//! cargo build --release -p embatch-vectors
//! cargo run --release -p embatch-vectors --example export_bench -- [ROWS] [RUNS]
//! ```
//! The emulator (moto) serves the Scan: its speed, not the exporter's, sets the wall times.

use std::process::Command;
use std::time::Instant;

use embatch_localaws::bins::binary;
use embatch_localaws::fixture::{records, Cloud};
use embatch_records::writer::{TableWriter, WriterConfig};
use embatch_testkit::median;
use embatch_testkit::peak_memory::run_measured;

/// The hand-written reference: the whole table into memory, then one Parquet file.
const BOTO3_PYARROW: &str = r#"
import sys, boto3, numpy as np, pyarrow as pa, pyarrow.parquet as pq
ids, vectors = [], []
pages = boto3.client("dynamodb").get_paginator("scan").paginate(TableName=sys.argv[1])
for page in pages:
    for item in page["Items"]:
        ids.append(item["ImageId"]["S"])
        vectors.append(np.frombuffer(item["Vector"]["B"], dtype="float32"))
flat = pa.array(np.concatenate(vectors))
table = pa.table({"ImageId": ids, "Vector": pa.FixedSizeListArray.from_arrays(flat, len(vectors[0]))})
pq.write_table(table, sys.argv[2])
"#;

/// Makes one side's command, given its output path.
type MakeCommand<'a> = Box<dyn Fn(&str) -> Command + 'a>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let cloud = Cloud::start().await;
    TableWriter::new(
        cloud.dynamodb.clone(),
        &cloud.table,
        WriterConfig::default(),
    )
    .write(records(rows, 512, "bench"))
    .await?;
    let exe = binary("embatch-vectors")?;
    let python = embatch_testkit::python::interpreter()?;
    let dir = tempfile::tempdir()?;
    let sides: [(&str, MakeCommand); 3] = [
        (
            "embatch-vectors export --format parquet",
            Box::new(|out| ours(&exe, &cloud, &["--format", "parquet", "--out", out])),
        ),
        (
            "embatch-vectors export (npy)",
            Box::new(|out| ours(&exe, &cloud, &["--out", out])),
        ),
        (
            "boto3 scan + pyarrow write_table",
            Box::new(|out| {
                let mut c = Command::new(&python);
                c.envs(cloud.emulator.env());
                c.args(["-c", BOTO3_PYARROW, &cloud.table, out]);
                c
            }),
        ),
    ];
    println!("{rows} items of 512-d, {runs} runs; medians");
    let mut results = Vec::new();
    for (name, command) in &sides {
        let (mut seconds, mut peaks) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let out = dir.path().join(format!("{}-{run}", results.len()));
            let started = Instant::now();
            let (status, stderr, peak) = run_measured(command(out.to_str().unwrap()));
            anyhow::ensure!(status.success(), "{name}: {stderr}");
            seconds.push(started.elapsed().as_secs_f64());
            peaks.push(peak as f64 / 1e6);
        }
        let (s, p) = (median(seconds), median(peaks));
        println!("{name:40} {s:7.1} s  peak RSS {p:7.1} MB");
        results.push((s, p));
    }
    let (reference_s, reference_p) = results[2];
    println!(
        "Parquet export against the reference: {:.2}x the speed, {:.2}x the memory",
        reference_s / results[0].0,
        results[0].1 / reference_p
    );
    Ok(())
}

fn ours(exe: &std::path::Path, cloud: &Cloud, args: &[&str]) -> Command {
    let mut c = Command::new(exe);
    c.envs(cloud.emulator.env());
    c.args(["--table", &cloud.table, "export"]).args(args);
    c
}
