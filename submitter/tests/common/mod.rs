//! A fresh emulator with a bucket, a table and Batch resources, and a way to run the real
//! `embatch` binary against it.
#![allow(dead_code)] // each test binary uses a different part

use std::process::Stdio;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use embatch_formats::s3uri::S3Uri;
use embatch_localaws::batch::{create_resources, BatchResources};
use embatch_localaws::fixture::{get_bytes, list_keys, put_bytes, Cloud};

/// Owned copies of `args` (for [`Fixture::embatch`]'s arguments).
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

pub struct Fixture {
    /// The emulator, bucket and table (reached through `Deref`).
    pub cloud: Cloud,
    pub batch: aws_sdk_batch::Client,
    pub resources: BatchResources,
}

/// What a run of the binary produced.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::ops::Deref for Fixture {
    type Target = Cloud;
    fn deref(&self) -> &Cloud {
        &self.cloud
    }
}

impl Fixture {
    pub async fn new() -> Self {
        let cloud = Cloud::start().await;
        let batch = aws_sdk_batch::Client::new(&cloud.config);
        let resources = create_resources(&cloud.emulator, &cloud.config, "submit")
            .await
            .unwrap();
        Self {
            cloud,
            batch,
            resources,
        }
    }

    /// Puts `keys` into `bucket`, each holding `body`, 32 at a time.
    pub async fn put_all(&self, bucket: &str, keys: &[impl AsRef<str> + Sync], body: &[u8]) {
        futures::stream::iter(keys)
            .map(|key| async move {
                put_bytes(&self.s3, &S3Uri::new(bucket, key.as_ref()), body).await
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    }

    /// The standard submit arguments for this fixture (bucket, queue, definition, table).
    pub fn submit_args(&self) -> Vec<String> {
        [
            "submit",
            "--bucket",
            &self.bucket,
            "--job-queue",
            &self.resources.job_queue,
            "--job-definition",
            &self.resources.job_definition,
            "--table",
            &self.table,
        ]
        .into_iter()
        .map(str::to_string)
        .collect()
    }

    /// Runs the real `embatch` binary with `args`, feeding `stdin`.
    pub async fn embatch(&self, args: &[String], stdin: Option<&[u8]>) -> Output {
        self.embatch_with(args, stdin, &[]).await
    }

    /// [`Fixture::embatch`] with extra environment variables (overriding the emulator's).
    pub async fn embatch_with(
        &self,
        args: &[String],
        stdin: Option<&[u8]>,
        env: &[(&str, &str)],
    ) -> Output {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_embatch"))
            .args(args)
            .env_clear()
            .envs(self.emulator.env())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            pipe.write_all(bytes).await.unwrap();
        }
        drop(pipe);
        let out = child.wait_with_output().await.unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every key under `prefix` in `bucket`.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        list_keys(&self.s3, bucket, prefix).await
    }

    /// The ids of every job in the fixture's queue, over every state (the emulator lists
    /// array children too, as `<id>:<index>`).
    pub async fn job_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for status in aws_sdk_batch::types::JobStatus::values() {
            let out = self
                .batch
                .list_jobs()
                .job_queue(&self.resources.job_queue)
                .job_status(aws_sdk_batch::types::JobStatus::from(*status))
                .send()
                .await
                .unwrap();
            let listed = out.job_summary_list().iter();
            ids.extend(listed.map(|j| j.job_id().expect("a listed job has an id").to_string()));
        }
        ids
    }

    /// Asserts the submitter left no trace: nothing under `embatch-runs/`, no job.
    pub async fn assert_nothing_written_or_submitted(&self) {
        let written = self.keys(&self.bucket, "embatch-runs/").await;
        assert!(written.is_empty(), "written: {written:?}");
        assert_eq!(self.jobs_in_queue().await, 0, "a job submitted");
    }

    /// How many jobs are in the fixture's queue, over every state.
    pub async fn jobs_in_queue(&self) -> usize {
        self.job_ids().await.len()
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let uri = S3Uri::new(bucket, key);
        get_bytes(&self.s3, &uri)
            .await
            .unwrap_or_else(|| panic!("{uri} exists"))
    }

    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        put_bytes(&self.s3, &S3Uri::new(bucket, key), &body).await;
    }
}
