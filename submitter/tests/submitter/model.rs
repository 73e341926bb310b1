//! One model per table: `embatch submit` samples the table's models and refuses a run of
//! another model before anything is written, unless `--replace-model`.

use crate::common;

use common::Fixture;
use embatch_formats::spec::ModelSpec;
use embatch_localaws::fixture::records;
use embatch_records::vector::{VectorMetadata, VectorRecord};
use embatch_records::writer::{TableWriter, WriterConfig};

/// The spec the image runs by default (`/opt/embatch/models/resnet18-v2.toml`).
fn default_model() -> ModelSpec {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/resnet18-v2-7.toml");
    ModelSpec::from_path(std::path::Path::new(path)).unwrap()
}

async fn store(f: &Fixture, records: Vec<VectorRecord>) {
    TableWriter::new(f.dynamodb.clone(), &f.table, WriterConfig::default())
        .write(records)
        .await
        .unwrap();
}

async fn submit(f: &Fixture, extra: &[&str]) -> common::Output {
    f.put_all(&f.bucket, &["images/a.jpg"], b"x").await;
    let mut args = f.submit_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("images/".into());
    f.embatch(&args, None).await
}

#[tokio::test]
async fn a_run_of_another_model_than_the_tables_is_refused_unless_replace_model() {
    let f = Fixture::new().await;
    // The fixture's vectors: model "resnet18-v2", sha256 abab…; and one the original sample
    // wrote (no model recorded), which never counts as another model.
    let mut stored = records(30, 512, "old");
    stored[0].meta = VectorMetadata::default();
    store(&f, stored).await;

    let refused = submit(&f, &[]).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    let model = default_model();
    for part in [
        "holds vectors of another model",
        &format!("sha256 {}, 512-d", "ab".repeat(32)),
        &format!("resnet18-v2-7, sha256 {}", model.sha256),
        "--replace-model",
    ] {
        assert!(
            refused.stderr.contains(part),
            "{part:?} in {}",
            refused.stderr
        );
    }
    f.assert_nothing_written_or_submitted().await;

    let replaced = submit(&f, &["--replace-model"]).await;
    assert_eq!(replaced.code, 0, "{}", replaced.stderr);
    assert!(
        replaced
            .stderr
            .contains("--replace-model: this run overwrites"),
        "{}",
        replaced.stderr
    );
    assert_eq!(f.jobs_in_queue().await, 1);
}

#[tokio::test]
async fn a_table_of_the_runs_model_or_an_unknown_spec_passes() {
    let f = Fixture::new().await;
    let mut same = records(5, 512, "same");
    for r in &mut same {
        r.meta.model_sha256 = Some(default_model().sha256);
    }
    store(&f, same).await;
    let out = submit(&f, &["--dry-run"]).await;
    assert_eq!(
        out.code, 0,
        "the table holds this run's model: {}",
        out.stderr
    );

    let out = submit(&f, &["--dry-run", "--model-spec", "/opt/mine/custom.toml"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the table's model is not checked before the run"),
        "{}",
        out.stderr
    );
}
