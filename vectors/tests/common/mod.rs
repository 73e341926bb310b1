//! What the `embatch-vectors` tests share: the CLI against an emulator table, the project's
//! Python, records stored with the real writer.
#![allow(dead_code)] // each test binary uses a different part

use std::process::Command;

use embatch_localaws::fixture::Cloud;
use embatch_localaws::run_ok;
use embatch_records::vector::VectorRecord;
use embatch_records::writer::{TableWriter, WriterConfig};

/// The project's Python (`.venv`: numpy, pyarrow, DuckDB, boto3).
pub fn python() -> Command {
    Command::new(embatch_localaws::python::interpreter().expect("scripts/setup made .venv"))
}

/// `embatch-vectors --table <the fixture's table>`, talking to the emulator.
pub fn cli(s: &Cloud) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_embatch-vectors"));
    command
        .envs(s.emulator.env())
        .env_remove("EMBATCH_TABLE")
        .args(["--table", &s.table]);
    command
}

/// The stdout of a command that must succeed.
pub fn stdout(command: &mut Command) -> String {
    let what = format!("{command:?}");
    String::from_utf8(run_ok(command, &what).stdout).expect("utf-8 output")
}

/// Stores `records` with the real writer.
pub async fn store(s: &Cloud, records: Vec<VectorRecord>) {
    TableWriter::new(s.dynamodb.clone(), &s.table, WriterConfig::default())
        .write(records)
        .await
        .unwrap();
}

/// Finite pseudo-random values (the fixture's vectors hold NaN and infinities on purpose).
pub fn finite(dimension: usize, seed: u64) -> Vec<f32> {
    (0..dimension as u64)
        .map(|j| ((seed * 7919 + j * 104_729 + seed * j * 31) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}
