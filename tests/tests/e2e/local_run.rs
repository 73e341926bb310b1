//! The local run (README's first command) on the generated sample set: what it prints must
//! match what the table really holds.

use std::collections::HashMap;
use std::process::Command;

use embatch_localaws::{bins, emulator, sample};
use embatch_records::reader::TableReader;
use embatch_records::vector::VectorRecord;
use futures::TryStreamExt;

/// Kills the kept emulator however the test ends.
struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: sending a signal to a process id has no memory-safety preconditions.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// `label value` lines of the local run's report, keyed by label.
fn report_fields(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (label, value) = l.split_once("  ")?;
            Some((label.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

#[tokio::test]
async fn local_run_on_the_sample_set_prints_what_the_table_holds() {
    let local = bins::binary("embatch-local").unwrap();
    let out = Command::new(&local).arg("--keep").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fields = report_fields(&stdout);
    let _emulator = fields.get("pid").map(|p| KillOnDrop(p.parse().unwrap()));
    assert!(
        out.status.success(),
        "local run failed:\n{stdout}\n{stderr}"
    );
    let number = |label: &str| -> usize {
        fields
            .get(label)
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
            .parse()
            .unwrap_or_else(|e| panic!("{label:?}: {e}"))
    };

    let expected = sample::generate(6, 7).len();
    assert_eq!(number("images found"), expected);
    assert_eq!(number("written"), expected);
    assert_eq!(number("failed"), 0);
    assert_eq!(number("children failed"), 0);
    assert!(stderr.contains("array children"), "{stderr}");

    let config = emulator::sdk_config_for(&fields["endpoint"]).await;
    let reader = TableReader::new(aws_sdk_dynamodb::Client::new(&config), &fields["table"]);
    let records: Vec<_> = reader.scan(2).try_collect().await.unwrap();
    assert_eq!(number("table items"), records.len());
    assert_eq!(records.len(), expected);
    for r in &records {
        let uri = r.meta.source_uri.as_deref().unwrap();
        assert!(uri.ends_with(&r.image_id), "{uri} vs {}", r.image_id);
        assert!(sample::family_of(&r.image_id).is_some(), "{}", r.image_id);
    }
    // The sample's families are visually distinct; even the random-weight test model keeps
    // them apart (deterministic: fixed sample seed, fixed model weights).
    let line = stdout
        .lines()
        .find(|l| l.starts_with("nearest neighbour with the same label"))
        .unwrap_or_else(|| panic!("no neighbour summary in:\n{stdout}"));
    let ratio = line.split(": ").nth(1).unwrap().split(' ').next().unwrap();
    let (hits, total) = ratio.split_once('/').unwrap();
    let (hits, total): (usize, usize) = (hits.parse().unwrap(), total.parse().unwrap());
    assert_eq!(total, expected);
    assert!(
        hits * 4 >= total * 3,
        "only {hits}/{total} same-family neighbours"
    );
    query_with_an_image_as_printed(&fields, &records);
}

/// The kept run's `nearest --image` instruction, with one of the uploaded images: the engine
/// that embeds the query is the worker's, so the image finds its own stored vector first.
fn query_with_an_image_as_printed(fields: &HashMap<String, String>, records: &[VectorRecord]) {
    let image = &sample::generate(6, 7)[5];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("query.img");
    std::fs::write(&file, &image.bytes).unwrap();
    let out = Command::new(bins::binary("embatch-vectors").unwrap())
        .envs(emulator::env_for(&fields["endpoint"]))
        .args(["--table", &fields["table"], "nearest", "-k", "1", "--json"])
        .arg("--image")
        .arg(&file)
        .args(["--model-spec", &fields["model spec"]])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let stored = records
        .iter()
        .find(|r| r.image_id.ends_with(&image.name))
        .unwrap();
    assert_eq!(top["image_id"], stored.image_id.as_str(), "{stdout}");
    assert!(top["similarity"].as_f64().unwrap() > 0.9999, "{stdout}");
}
