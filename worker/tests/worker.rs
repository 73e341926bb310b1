//! End-to-end tests of the `embatch-worker` binary against the AWS emulator, started with the
//! environment AWS Batch gives an array child.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::Select;
use embatch_engine::{Engine, Limits, ModelSpec};
use embatch_localaws::emulator::unique_name;
use embatch_localaws::faults::{Fault, FaultPlan, FaultProxy, FaultRule, Match};
use embatch_localaws::{test_model, Emulator};
use embatch_records::manifest::{to_jsonl, ManifestLine};
use embatch_records::reader::TableReader;
use embatch_records::report::{ChildSummary, FailureLine};
use embatch_records::run::{env, exit, RunLayout};
use embatch_records::s3uri::S3Uri;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

const WORKER: &str = env!("CARGO_BIN_EXE_embatch-worker");

/// One emulator with a bucket, a table and a run folder.
struct Fixture {
    emulator: Emulator,
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    bucket: String,
    table: String,
    run_id: String,
    layout: RunLayout,
    spec: PathBuf,
}

impl Fixture {
    async fn new() -> Fixture {
        // On this thread: the emulator dies with the thread that started it, and tokio's
        // blocking threads come and go.
        let emulator = Emulator::start().expect("the emulator starts");
        let config = emulator.sdk_config().await;
        let s3 = embatch_records::aws::s3(&config);
        let dynamodb = embatch_records::aws::dynamodb(&config);
        let bucket = unique_name("images");
        let table = unique_name("vectors");
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        embatch_records::table::create_table(&dynamodb, &table)
            .await
            .unwrap();
        let run_id = "20260101T000000Z-abcdef".to_string();
        let layout = RunLayout::new(&S3Uri::new(&bucket, "embatch-runs/"), &run_id);
        let spec = tokio::task::spawn_blocking(test_model::resnet18_spec)
            .await
            .unwrap()
            .expect("the test model is generated");
        Fixture {
            emulator,
            s3,
            dynamodb,
            bucket,
            table,
            run_id,
            layout,
            spec,
        }
    }

    /// Uploads an object; returns its manifest line (ETag as listed, without quotes).
    async fn put(&self, key: &str, bytes: &[u8]) -> ManifestLine {
        let out = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(bytes.to_vec().into())
            .send()
            .await
            .unwrap();
        ManifestLine {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            size: bytes.len() as u64,
            etag: out.e_tag().unwrap().trim_matches('"').to_string(),
            image_id: key.to_string(),
        }
    }

    async fn put_manifest(&self, n: usize, lines: &[ManifestLine]) {
        let uri = self.layout.manifest(n);
        self.s3
            .put_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .body(to_jsonl(lines).into())
            .send()
            .await
            .unwrap();
    }

    /// The worker as AWS Batch starts array child `index` of a job with manifest offset 0,
    /// talking to `endpoint` (the emulator or a fault proxy in front of it).
    fn worker_via(&self, endpoint_env: Vec<(String, String)>, index: usize) -> Command {
        let mut command = Command::new(WORKER);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(endpoint_env)
            .env(env::RUN_ID, &self.run_id)
            .env(env::RUN_URI, self.layout.root.to_string())
            .env(env::MANIFEST_OFFSET, "0")
            .env(env::TABLE, &self.table)
            .env(env::MODEL_SPEC, &self.spec)
            .env(env::ARRAY_INDEX, index.to_string())
            .env(env::JOB_ID, format!("job-1234:{index}"))
            .stdin(Stdio::null());
        command
    }

    fn worker(&self, index: usize) -> Command {
        self.worker_via(self.emulator.env(), index)
    }

    async fn get_text(&self, uri: &S3Uri) -> String {
        let out = self
            .s3
            .get_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{uri} is readable: {e:?}"));
        String::from_utf8(out.body.collect().await.unwrap().to_vec()).unwrap()
    }

    async fn summary(&self, n: usize) -> ChildSummary {
        serde_json::from_str(&self.get_text(&self.layout.summary(n)).await).unwrap()
    }

    async fn failures(&self, n: usize) -> Vec<FailureLine> {
        self.get_text(&self.layout.failures(n))
            .await
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Items in the table now.
    async fn stored(&self) -> usize {
        let mut count = 0;
        let mut start = None;
        loop {
            let out = self
                .dynamodb
                .scan()
                .table_name(&self.table)
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .consistent_read(true)
                .send()
                .await
                .unwrap();
            count += out.count() as usize;
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return count;
            }
        }
    }

    /// Polls the table until it holds at least `n` items (the worker's observable progress).
    async fn wait_until_stored(&self, n: usize, worker: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.stored().await < n {
            assert!(
                worker.try_wait().unwrap().is_none(),
                "the worker ended before storing {n} vectors"
            );
            assert!(
                Instant::now() < deadline,
                "{n} vectors not stored within 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn engine(&self) -> Engine {
        Engine::load(&ModelSpec::from_path(&self.spec).unwrap()).unwrap()
    }
}

/// A distinct picture per seed: a gradient with a disc.
fn picture(width: u32, height: u32, seed: u32) -> RgbImage {
    let (cx, cy, r) = (
        (seed * 37 % width) as f32,
        (seed * 53 % height) as f32,
        (width.min(height) / 3) as f32,
    );
    RgbImage::from_fn(width, height, |x, y| {
        let inside = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < r * r;
        if inside {
            Rgb([(seed * 71 % 256) as u8, 30, 200])
        } else {
            Rgb([
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                (seed * 13 % 256) as u8,
            ])
        }
    })
}

fn encode(image: RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn run(mut command: Command) -> (ExitStatus, String) {
    let out = command.output().expect("the worker starts");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON log events of a worker's stderr with the given message.
fn events(stderr: &str, message: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"] == message)
        .collect()
}

const FORMATS: [(ImageFormat, &str); 6] = [
    (ImageFormat::Jpeg, "jpg"),
    (ImageFormat::Png, "png"),
    (ImageFormat::WebP, "webp"),
    (ImageFormat::Gif, "gif"),
    (ImageFormat::Bmp, "bmp"),
    (ImageFormat::Tiff, "tiff"),
];

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
}

/// `n` small distinct JPEGs under `prefix/`; their manifest lines.
async fn upload_many(fx: &Fixture, prefix: &str, n: u32) -> Vec<ManifestLine> {
    let mut lines = Vec::new();
    for i in 0..n {
        let bytes = encode(picture(48 + i % 17, 40 + i % 11, i), ImageFormat::Jpeg);
        lines.push(fx.put(&format!("{prefix}/{i:05}.jpg"), &bytes).await);
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_a_rerun_stores_every_image_exactly_once() {
    let fx = Fixture::new().await;
    let lines = upload_many(&fx, "many", 160).await;
    fx.put_manifest(0, &lines).await;

    let mut first = fx
        .worker(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    fx.wait_until_stored(30, &mut first).await;
    first.kill().unwrap(); // SIGKILL: no chance to flush
    first.wait().unwrap();
    let after_kill = fx.stored().await;
    assert!(
        after_kill < lines.len(),
        "the kill came too late to test anything"
    );

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
    let lines = upload_many(&fx, "term", 400).await;
    fx.put_manifest(0, &lines).await;

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
    let summary_uri = fx.layout.summary(0);
    assert!(fx
        .s3
        .head_object()
        .bucket(&summary_uri.bucket)
        .key(&summary_uri.key)
        .send()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_s3_faults_and_mid_body_resets_are_retried_without_losing_an_image() {
    let fx = Fixture::new().await;
    let lines = upload_many(&fx, "flaky", 24).await;
    fx.put_manifest(0, &lines).await;
    let proxy = FaultProxy::start(
        &fx.emulator.endpoint(),
        FaultPlan {
            seed: 11,
            rules: vec![
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
        },
    )
    .unwrap();
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
    let summary = fx.summary(0).await;
    assert_eq!(
        (summary.written, summary.failed),
        (lines.len() as u64, 0),
        "{stderr}"
    );
    assert_eq!(fx.stored().await, lines.len());
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
    fx.s3
        .put_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .body(b"{\"bucket\": \"b\"}\n".to_vec().into())
        .send()
        .await
        .unwrap();
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
