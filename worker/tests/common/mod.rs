//! What the worker's end-to-end tests share: an emulator with a bucket, a table and a run
//! folder, the worker started as AWS Batch starts an array child, and test pictures.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod hostile;

use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::Select;
use embatch_engine::{Engine, Limits, ModelSpec};
use embatch_formats::manifest::{to_jsonl, ManifestLine};
use embatch_formats::report::{ChildSummary, FailureLine};
use embatch_formats::run::{env, RunLayout};
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::emulator::unique_name;
use embatch_localaws::fixture::{put_bytes, Cloud};
use embatch_localaws::{test_model, Emulator};
use embatch_records::reader::TableReader;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

pub const WORKER: &str = env!("CARGO_BIN_EXE_embatch-worker");

/// One emulator with a bucket and a table (`Cloud`, reached through `Deref`) and a run folder.
pub struct Fixture {
    pub cloud: Cloud,
    pub run_id: String,
    pub layout: RunLayout,
    pub spec: PathBuf,
}

impl std::ops::Deref for Fixture {
    type Target = Cloud;
    fn deref(&self) -> &Cloud {
        &self.cloud
    }
}

impl std::ops::DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut Cloud {
        &mut self.cloud
    }
}

impl Fixture {
    pub async fn new() -> Fixture {
        // On this thread: the emulator dies with the thread that started it, and tokio's
        // blocking threads come and go.
        let cloud = Cloud::start().await;
        let run_id = "20260101T000000Z-abcdef".to_string();
        let layout = RunLayout::new(&S3Uri::new(&cloud.bucket, "embatch-runs/"), &run_id);
        let spec = tokio::task::spawn_blocking(test_model::resnet18_spec)
            .await
            .unwrap()
            .expect("the test model is generated");
        Fixture {
            cloud,
            run_id,
            layout,
            spec,
        }
    }

    /// Uploads an object; returns its manifest line (ETag as listed, without quotes).
    pub async fn put(&self, key: &str, bytes: &[u8]) -> ManifestLine {
        ManifestLine {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            size: bytes.len() as u64,
            etag: self.cloud.put(key, bytes).await,
            image_id: key.to_string(),
        }
    }

    pub async fn put_manifest(&self, n: usize, lines: &[ManifestLine]) {
        put_bytes(&self.s3, &self.layout.manifest(n), &to_jsonl(lines)).await;
    }

    /// [`upload_many`] and manifest `n` listing what it uploaded.
    pub async fn upload_manifest(
        &self,
        n: usize,
        prefix: &str,
        images: u32,
    ) -> (Vec<ManifestLine>, Vec<(String, Vec<u8>)>) {
        let (lines, images) = upload_many(self, prefix, images).await;
        self.put_manifest(n, &lines).await;
        (lines, images)
    }

    /// The worker as AWS Batch starts array child `index` of a job with manifest offset 0,
    /// talking to `endpoint` (the emulator or a fault proxy in front of it).
    pub fn worker_via(&self, endpoint_env: Vec<(String, String)>, index: usize) -> Command {
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

    pub fn worker(&self, index: usize) -> Command {
        self.worker_via(self.emulator.env(), index)
    }

    pub async fn get_text(&self, uri: &S3Uri) -> String {
        let bytes = self.get(uri).await;
        String::from_utf8(bytes.unwrap_or_else(|| panic!("{uri} exists"))).unwrap()
    }

    pub async fn summary(&self, n: usize) -> ChildSummary {
        serde_json::from_str(&self.get_text(&self.layout.summary(n)).await).unwrap()
    }

    pub async fn failures(&self, n: usize) -> Vec<FailureLine> {
        self.get_text(&self.layout.failures(n))
            .await
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Items in the table now.
    pub async fn stored(&self) -> usize {
        // A count, not the items: `wait_until_stored` polls this every 50 ms.
        let pages = self
            .dynamodb
            .scan()
            .table_name(&self.table)
            .select(Select::Count);
        let pages = pages.consistent_read(true).into_paginator().send();
        let pages = pages.collect::<Result<Vec<_>, _>>().await.unwrap();
        pages.iter().map(|p| p.count() as usize).sum()
    }

    /// Asserts child `n`'s summary counts all `images` written and none failed, and the table
    /// holds one item each.
    pub async fn assert_all_written(&self, n: usize, images: usize, stderr: &str) {
        let summary = self.summary(n).await;
        let counts = (summary.written, summary.failed);
        assert_eq!(counts, (images as u64, 0), "{stderr}");
        assert_eq!(self.stored().await, images, "one item per image");
    }

    /// Polls the table until it holds at least `n` items (the worker's observable progress).
    pub async fn wait_until_stored(&self, n: usize, worker: &mut Child) {
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

    pub fn engine(&self) -> Engine {
        Engine::load(&ModelSpec::from_path(&self.spec).unwrap()).unwrap()
    }

    /// Asserts each `(image id, bytes)` is stored once with the engine's vector on those bytes.
    pub async fn assert_vectors(&self, engine: &Engine, images: &[(String, Vec<u8>)]) {
        let reader = TableReader::new(self.dynamodb.clone(), self.table.clone());
        let ids: Vec<&str> = images.iter().map(|(id, _)| id.as_str()).collect();
        let fetched = reader.get(&ids).await.unwrap();
        assert!(fetched.missing.is_empty(), "missing: {:?}", fetched.missing);
        for (id, bytes) in images {
            let record = fetched.record(id).unwrap();
            let prepared = engine.prepare(bytes, &Limits::default()).unwrap();
            let expected = engine.embed(&[prepared]).unwrap();
            assert_eq!(record.vector.len(), engine.dimension(), "{id:?}");
            let c = cosine(&record.vector, &expected[0]);
            assert!(c >= 0.9999, "{id:?}: cosine {c}");
        }
    }
}

/// A distinct picture per seed: a gradient with a disc.
pub fn picture(width: u32, height: u32, seed: u32) -> RgbImage {
    let (cx, cy, r) = (
        (seed * 37 % width) as f32,
        (seed * 53 % height) as f32,
        (width.min(height) / 3).max(1) as f32,
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

pub fn encode(image: RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

pub use embatch_testkit::cosine;

pub fn run(mut command: Command) -> (ExitStatus, String) {
    let out = command.output().expect("the worker starts");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `n` distinct JPEGs and PNGs under `prefix/`: their manifest lines and bytes.
pub async fn upload_many(
    fx: &Fixture,
    prefix: &str,
    n: u32,
) -> (Vec<ManifestLine>, Vec<(String, Vec<u8>)>) {
    let mut lines = Vec::new();
    let mut images = Vec::new();
    for i in 0..n {
        let (format, ext) = if i % 2 == 0 {
            (ImageFormat::Jpeg, "jpg")
        } else {
            (ImageFormat::Png, "png")
        };
        let bytes = encode(picture(48 + i % 17, 40 + i % 11, i), format);
        let line = fx.put(&format!("{prefix}/{i:05}.{ext}"), &bytes).await;
        images.push((line.image_id.clone(), bytes));
        lines.push(line);
    }
    (lines, images)
}

/// A started worker whose stderr is being collected (on a thread, so a full pipe never
/// blocks it).
pub struct Running {
    pub child: Child,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts `command` with its stderr collected.
pub fn start(mut command: Command) -> Running {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker starts");
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    Running { child, stderr }
}

impl Running {
    /// Waits for the end, at most `limit` (then kills it and fails the test): the status, the
    /// stderr, and how long this wait took.
    pub async fn finish(self, limit: Duration) -> (ExitStatus, String, Duration) {
        let started = Instant::now();
        let pid = self.child.id();
        let mut child = self.child;
        let waited =
            tokio::time::timeout(limit, tokio::task::spawn_blocking(move || child.wait())).await;
        let Ok(status) = waited else {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the worker did not end within {limit:?}");
        };
        let status = status.unwrap().unwrap();
        (status, self.stderr.join().unwrap(), started.elapsed())
    }

    /// The collected stderr, once the child has ended (its pipe closed).
    pub fn stderr(self) -> String {
        self.stderr.join().unwrap()
    }
}
