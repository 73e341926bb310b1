//! A fresh emulator with a bucket, a table and Batch resources, and a way to run the real
//! `embatch` binary against it.
#![allow(dead_code)] // each test binary uses a different part

use std::process::Stdio;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use embatch_localaws::batch::{create_resources, BatchResources};
use embatch_localaws::emulator::{unique_name, Emulator};

pub struct Fixture {
    pub emulator: Emulator,
    pub s3: aws_sdk_s3::Client,
    pub batch: aws_sdk_batch::Client,
    pub bucket: String,
    pub table: String,
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

impl Fixture {
    pub async fn new() -> Self {
        let emulator = Emulator::start().expect("the emulator starts");
        let config = emulator.sdk_config().await;
        let s3 = embatch_aws::client::s3(&config);
        let batch = aws_sdk_batch::Client::new(&config);
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let bucket = unique_name("images");
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let table = unique_name("vectors");
        dynamodb
            .create_table()
            .table_name(&table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("ImageId")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("ImageId")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .unwrap();
        let resources = create_resources(&emulator, &config, "submit")
            .await
            .unwrap();
        Self {
            emulator,
            s3,
            batch,
            bucket,
            table,
            resources,
        }
    }

    /// Puts `keys` into `bucket`, each holding `body`, 32 at a time.
    pub async fn put_all(&self, bucket: &str, keys: &[String], body: &[u8]) {
        futures::stream::iter(keys)
            .map(|key| {
                let body = body.to_vec();
                async move {
                    self.s3
                        .put_object()
                        .bucket(bucket)
                        .key(key)
                        .body(body.into())
                        .send()
                        .await
                        .map_err(|e| format!("put {key}: {e:?}"))
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
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
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys(1000)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            keys.extend(
                page.unwrap()
                    .contents()
                    .iter()
                    .map(|o| o.key().unwrap().to_string()),
            );
        }
        keys
    }

    /// How many jobs are in the fixture's queue, over every state.
    pub async fn jobs_in_queue(&self) -> usize {
        let mut n = 0;
        for status in aws_sdk_batch::types::JobStatus::values() {
            let out = self
                .batch
                .list_jobs()
                .job_queue(&self.resources.job_queue)
                .job_status(aws_sdk_batch::types::JobStatus::from(*status))
                .send()
                .await
                .unwrap();
            n += out.job_summary_list().len();
        }
        n
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        out.body.collect().await.unwrap().to_vec()
    }

    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
}
