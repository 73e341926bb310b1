//! End-to-end tests of the `embatch-worker` binary against the AWS emulator, started with the
//! environment AWS Batch gives an array child.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use embatch_engine::{Limits, ModelSpec};
use embatch_formats::run::{env, exit};
use embatch_localaws::faults::{Fault, FaultRule, Match};
use embatch_localaws::fixture::{put_bytes, raw_items};
use embatch_records::reader::TableReader;
use image::ImageFormat;

use crate::common;
use common::*;

/// The JSON log events of a worker's stderr with the given message.
fn events(stderr: &str, message: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"] == message)
        .collect()
}

use embatch_testkit::sample::FORMATS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_manifest_ends_with_every_image_written_or_failed_then_a_rerun_skips_all() {
    let fx = Fixture::new().await;
    let engine = fx.engine();
    let max_pixels = 1_000_000u64;

    // Valid images of every supported format, in several sizes.
    let mut lines = Vec::new();
    let mut valid: BTreeMap<String, (Vec<u8>, (u32, u32))> = BTreeMap::new();
    for (i, (format, ext)) in FORMATS.iter().enumerate() {
        for j in 0..2u32 {
            let (w, h) = (97 + 40 * i as u32 + 13 * j, 64 + 29 * j);
            let bytes = encode(picture(w, h, i as u32 * 2 + j), *format);
            let key = format!("photos/{ext}/{j} é+%.{ext}");
            lines.push(fx.put(&key, &bytes).await);
            valid.insert(key, (bytes, (w, h)));
        }
    }

    // Bad ones: what the report must say about each, by key.
    let mut expected_failures: BTreeMap<String, String> = BTreeMap::new();
    let mut missing = fx.put("bad/missing.jpg", b"x").await;
    missing.key = "bad/never-uploaded.jpg".into();
    missing.image_id = missing.key.clone();
    lines.push(missing);
    expected_failures.insert("bad/never-uploaded.jpg".into(), "not_found".into());

    let jpeg = encode(picture(120, 90, 99), ImageFormat::Jpeg);
    let bad: [(&str, Vec<u8>); 4] = [
        ("bad/empty.png", Vec::new()),
        ("bad/truncated.jpg", jpeg[..jpeg.len() / 2].to_vec()),
        ("bad/notes.jpg", b"<html>not an image</html>".to_vec()),
        (
            "bad/huge.png",
            encode(picture(1100, 1000, 5), ImageFormat::Png),
        ),
    ];
    let limits = Limits {
        max_pixels,
        ..Limits::default()
    };
    // (The engine's byte limit stays at its default here: the worker's is checked at fetch.)
    for (key, bytes) in bad {
        let kind = engine.prepare(&bytes, &limits).unwrap_err().kind();
        lines.push(fx.put(key, &bytes).await);
        expected_failures.insert(key.into(), kind.into());
    }
    assert_eq!(expected_failures["bad/empty.png"], "empty");
    assert_eq!(expected_failures["bad/notes.jpg"], "unknown_format");
    assert_eq!(expected_failures["bad/huge.png"], "too_many_pixels");

    // Over the encoded-size limit: refused before downloading, by the manifest's size or (when
    // the listing understated it) by Content-Length.
    let max_bytes = lines.iter().map(|l| l.size).max().unwrap() + 1;
    let big = encode(picture(700, 500, 7), ImageFormat::Bmp);
    assert!(big.len() as u64 > max_bytes);
    lines.push(fx.put("bad/big.bmp", &big).await);
    let mut understated = fx.put("bad/big-understated.bmp", &big).await;
    understated.size = 100;
    lines.push(understated);
    for key in ["bad/big.bmp", "bad/big-understated.bmp"] {
        expected_failures.insert(key.into(), "too_large".into());
    }

    // A second line claiming the ImageId of the first valid image.
    let mut duplicate = fx
        .put("photos/dup.png", &valid.values().next().unwrap().0)
        .await;
    duplicate.image_id = lines[0].image_id.clone();
    lines.push(duplicate);
    expected_failures.insert("photos/dup.png".into(), "duplicate_image_id".into());

    // This child is array index 3 of a job whose offset is 0: it reads manifest 3.
    fx.put_manifest(3, &lines).await;
    let worker = || {
        let mut w = fx.worker(3);
        w.args(["--max-pixels", &max_pixels.to_string()]);
        w.args(["--max-encoded-bytes", &max_bytes.to_string()]);
        w
    };
    let (status, stderr) = run(worker());
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");

    let summary = fx.summary(3).await;
    assert_eq!(summary.manifest, 3);
    assert_eq!(summary.images, lines.len() as u64);
    assert_eq!(
        (summary.written, summary.skipped, summary.failed),
        (valid.len() as u64, 0, expected_failures.len() as u64)
    );
    assert_eq!(summary.job_id.as_deref(), Some("job-1234:3"));
    let reported: BTreeMap<String, String> = fx
        .failures(3)
        .await
        .into_iter()
        .map(|f| {
            assert!(
                f.message.contains(&f.key) || f.kind == "duplicate_image_id",
                "{f:?}"
            );
            (f.key, f.kind)
        })
        .collect();
    assert_eq!(reported, expected_failures);

    // The stored vectors are the engine's on the same bytes, with their provenance.
    let spec = ModelSpec::from_path(&fx.spec).unwrap();
    let reader = TableReader::new(fx.dynamodb.clone(), fx.table.clone());
    let ids: Vec<&String> = valid.keys().collect();
    let fetched = reader.get(&ids).await.unwrap();
    assert!(fetched.missing.is_empty(), "missing: {:?}", fetched.missing);
    let etags: BTreeMap<&str, &str> = lines
        .iter()
        .map(|l| (l.key.as_str(), l.etag.as_str()))
        .collect();
    for (key, (bytes, (w, h))) in &valid {
        let record = fetched.record(key).unwrap();
        let expected = engine
            .embed(&[engine.prepare(bytes, &limits).unwrap()])
            .unwrap();
        assert_eq!(record.vector.len(), engine.dimension());
        let c = cosine(&record.vector, &expected[0]);
        assert!(c >= 0.9999, "{key}: cosine {c}");
        let m = &record.meta;
        assert_eq!(m.source_etag.as_deref(), Some(etags[key.as_str()]), "{key}");
        assert_eq!(m.source_uri, Some(format!("s3://{}/{key}", fx.bucket)));
        assert_eq!(m.source_size, Some(bytes.len() as u64));
        assert_eq!((m.width, m.height), (Some(*w), Some(*h)), "{key}");
        assert_eq!(m.model_sha256.as_deref(), Some(spec.sha256.as_str()));
        assert_eq!(m.model.as_deref(), Some(spec.name.as_str()));
        assert_eq!(m.run_id.as_deref(), Some(fx.run_id.as_str()));
        assert_eq!(m.job_id.as_deref(), Some("job-1234:3"));
        assert_eq!(m.manifest, Some(3));
    }
    assert_eq!(fx.stored().await, valid.len());

    // The summary log line carries counts, throughput and time per stage.
    let summary_event = &events(&stderr, "summary")[0];
    for field in [
        "written",
        "images_per_sec",
        "fetch_s",
        "decode_s",
        "infer_s",
        "write_s",
    ] {
        assert!(
            summary_event.get(field).is_some(),
            "{field} missing: {summary_event}"
        );
    }
    assert!(
        !stderr.contains("testing"),
        "the logs never show credentials"
    );

    // A re-run (a Batch retry) finds everything stored and recomputes nothing.
    let (status, stderr) = run(worker());
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let again = fx.summary(3).await;
    assert_eq!(
        (again.written, again.skipped, again.failed),
        (0, valid.len() as u64, expected_failures.len() as u64)
    );
    assert_eq!(events(&stderr, "summary")[0]["computed"], 0);

    // --force recomputes.
    let mut forced = worker();
    forced.arg("--force");
    let (status, stderr) = run(forced);
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    assert_eq!(fx.summary(3).await.written, valid.len() as u64);
    assert_eq!(fx.stored().await, valid.len());

    another_models_vectors_are_kept_unless_replace_model(&fx, worker, valid.len()).await;
}

/// Vectors another model computed (their ModelSha256 differs) are never overwritten silently:
/// each of those lines fails as `model_mismatch`, under `--force` too, and the stored vectors
/// stay as they were; `EMBATCH_REPLACE_MODEL=true` (the submitter's `--replace-model`)
/// overwrites them.
async fn another_models_vectors_are_kept_unless_replace_model(
    fx: &Fixture,
    worker: impl Fn() -> Command,
    stored: usize,
) {
    let other = "0".repeat(64);
    let reader = TableReader::new(fx.dynamodb.clone(), fx.table.clone());
    let ids: Vec<String> = raw_items(&fx.dynamodb, &fx.table)
        .await
        .iter()
        .map(|item| item["ImageId"].as_s().unwrap().clone())
        .collect();
    assert_eq!(ids.len(), stored);
    for id in &ids {
        fx.dynamodb
            .update_item()
            .table_name(&fx.table)
            .key("ImageId", AttributeValue::S(id.clone()))
            .update_expression("SET ModelSha256 = :m")
            .expression_attribute_values(":m", AttributeValue::S(other.clone()))
            .send()
            .await
            .unwrap();
    }
    let before = reader.get(&ids).await.unwrap().found;
    for force in [false, true] {
        let mut w = worker();
        if force {
            w.arg("--force");
        }
        let (status, stderr) = run(w);
        assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
        assert_eq!(fx.summary(3).await.written, 0, "force: {force}");
        let mismatched: Vec<_> = fx
            .failures(3)
            .await
            .into_iter()
            .filter(|f| f.kind == "model_mismatch")
            .collect();
        assert_eq!(mismatched.len(), stored, "force: {force}");
        for f in &mismatched {
            for part in [f.key.as_str(), other.as_str(), "--replace-model"] {
                assert!(f.message.contains(part), "{part} not in {f:?}");
            }
        }
        assert_eq!(reader.get(&ids).await.unwrap().found, before);
    }
    let mut replace = worker();
    replace.env(env::REPLACE_MODEL, "true");
    let (status, stderr) = run(replace);
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    assert_eq!(fx.summary(3).await.written, stored as u64);
    let sha256 = ModelSpec::from_path(&fx.spec).unwrap().sha256;
    for record in reader.get(&ids).await.unwrap().found {
        assert_eq!(record.meta.model_sha256.as_deref(), Some(sha256.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_three_points_then_a_rerun_stores_every_image_exactly_once() {
    let fx = Fixture::new().await;
    let (lines, _) = fx.upload_manifest(0, "many", 160).await;

    // SIGKILL (no chance to flush) once the table holds 1, then 40, then 100 vectors: right
    // after the first write, and twice in the middle of re-runs that resumed.
    let mut after_kill = 0;
    for point in [1, 40, 100] {
        let mut worker = fx
            .worker(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        fx.wait_until_stored(point, &mut worker).await;
        worker.kill().unwrap();
        worker.wait().unwrap();
        after_kill = fx.stored().await;
        assert!(
            (point..lines.len()).contains(&after_kill),
            "killed at {after_kill} stored, aiming at {point}: too late to test anything"
        );
    }

    let (status, stderr) = run(fx.worker(0));
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let summary = fx.summary(0).await;
    assert_eq!(summary.failed, 0);
    assert_eq!(summary.written + summary.skipped, lines.len() as u64);
    assert!(
        summary.skipped >= after_kill as u64,
        "{summary:?} after {after_kill} stored"
    );
    assert_eq!(
        fx.stored().await,
        lines.len(),
        "one item per image, no more"
    );
    let reader = TableReader::new(fx.dynamodb.clone(), fx.table.clone());
    let ids: Vec<&str> = lines.iter().map(|l| l.image_id.as_str()).collect();
    assert!(reader.get(&ids).await.unwrap().missing.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_143_promptly_with_every_computed_vector_flushed() {
    let fx = Fixture::new().await;
    let (lines, _) = fx.upload_manifest(0, "term", 400).await;

    let log = tempfile::NamedTempFile::new().unwrap();
    let mut worker = fx
        .worker(0)
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    fx.wait_until_stored(25, &mut worker).await;
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "no exit within 60 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM");
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(status.code(), Some(exit::INTERRUPTED), "{stderr}");
    assert!(took < Duration::from_secs(15), "took {took:?} to stop");

    let summary = &events(&stderr, "summary")[0];
    assert_eq!(summary["outcome"], "interrupted");
    let written = summary["written"].as_u64().unwrap();
    assert_eq!(
        summary["computed"].as_u64().unwrap(),
        written,
        "every computed vector was flushed"
    );
    assert_eq!(fx.stored().await as u64, written);
    assert!(written < lines.len() as u64, "it stopped early");
    // No report for an unfinished child: its retry writes it.
    assert_eq!(fx.get(&fx.layout.summary(0)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_s3_faults_and_mid_body_resets_are_retried_without_losing_an_image() {
    let fx = Fixture::new().await;
    let (lines, _) = fx.upload_manifest(0, "flaky", 24).await;
    let proxy = fx.emulator.fault_proxy(
        11,
        [
            FaultRule::new(
                Match::s3_get_under(&fx.bucket, "flaky/"),
                Fault::ResetMidBody,
            )
            .limit(6),
            FaultRule::new(Match::s3_get_under(&fx.bucket, "flaky/"), Fault::Throttle)
                .probability(0.2)
                .limit(6),
            FaultRule::new(
                Match::s3_get_under(&fx.bucket, "flaky/"),
                Fault::Status(500),
            )
            .probability(0.2)
            .limit(6),
        ],
    );
    let (status, stderr) = run(fx.worker_via(proxy.env(), 0));
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let counts = proxy.counts();
    assert!(counts.injected() >= 6, "faults injected: {counts:?}");
    eprintln!("{counts:?}");
    let retried: Vec<_> = events(&stderr, "transient S3 error, retrying");
    assert!(
        retried
            .iter()
            .any(|e| e["error"].as_str().unwrap().contains("failed after")),
        "a reset mid-body was retried by the worker: {retried:?}"
    );
    fx.assert_all_written(0, lines.len(), &stderr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_exit_2_and_name_the_input() {
    let fx = Fixture::new().await;
    // No manifest 5 in the run.
    let (status, stderr) = run(fx.worker(5));
    assert_eq!(status.code(), Some(exit::PERMANENT), "{stderr}");
    assert!(
        stderr.contains(&fx.layout.manifest(5).to_string()),
        "{stderr}"
    );

    // A malformed manifest.
    let uri = fx.layout.manifest(6);
    put_bytes(&fx.s3, &uri, b"{\"bucket\": \"b\"}\n").await;
    let (status, stderr) = run(fx.worker(6));
    assert_eq!(status.code(), Some(exit::PERMANENT), "{stderr}");
    assert!(stderr.contains(&format!("{uri} line 1")), "{stderr}");

    // A model spec that does not exist.
    let mut command = fx.worker(6);
    command.env(env::MODEL_SPEC, "/nonexistent/spec.toml");
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(exit::PERMANENT), "{stderr}");
    assert!(stderr.contains("/nonexistent/spec.toml"), "{stderr}");

    // A model file that is not the one its spec names: refuse to start.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&fx.spec).unwrap();
    let spec = ModelSpec::from_path(&fx.spec).unwrap();
    let tampered = text.replace(&spec.sha256, &"0".repeat(64)).replace(
        "file = \"",
        &format!("file = \"{}/", fx.spec.parent().unwrap().display()),
    );
    let tampered_path = dir.path().join("tampered.toml");
    std::fs::write(&tampered_path, tampered).unwrap();
    let line = fx
        .put("ok.png", &encode(picture(50, 40, 1), ImageFormat::Png))
        .await;
    fx.put_manifest(7, &[line]).await;
    let mut command = fx.worker(7);
    command.env(env::MODEL_SPEC, &tampered_path);
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(exit::PERMANENT), "{stderr}");
    assert!(stderr.contains("sha256"), "{stderr}");

    // --help documents every setting with its environment variable.
    let help = Command::new(WORKER).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for name in [
        env::RUN_URI,
        env::RUN_ID,
        env::TABLE,
        env::MODEL_SPEC,
        env::ARRAY_INDEX,
        env::MANIFEST_OFFSET,
        env::JOB_ID,
    ] {
        assert!(help.contains(name), "--help lacks {name}");
    }
}
