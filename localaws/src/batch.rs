//! Playing AWS Batch against the emulator.
//!
//! The emulator accepts Batch jobs but never runs them (every job reads SUCCEEDED at once).
//! [`Player`] does what AWS Batch would: for every submitted job and array index it starts
//! the worker as a child process with the environment Batch would give the container:
//! - the job's container environment **as read back through DescribeJobs** (so a test also
//!   checks the submitter really put it there);
//! - `AWS_BATCH_JOB_ARRAY_INDEX` for array children only, and `AWS_BATCH_JOB_ID`
//!   (`<job id>:<index>` for array children);
//! - the emulator's endpoint and test credentials ([`crate::Emulator::env`]), `PATH`, and
//!   whatever [`Player::env`] adds. Nothing else of the caller's environment leaks in.
//!
//! [`create_resources`] makes the compute environment, job queue and job definition a
//! submitter needs in the emulator.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use embatch_localaws::{batch, Emulator};
//! let emulator = Emulator::start()?;
//! let config = emulator.sdk_config().await;
//! let resources = batch::create_resources(&emulator, &config, "embatch").await?;
//! // ... submit jobs to resources.job_queue / resources.job_definition ...
//! let client = aws_sdk_batch::Client::new(&config);
//! let runs = batch::Player::new("target/release/embatch-worker", &emulator)
//!     .parallelism(2)
//!     .play(&client, &["<job id>".to_string()])
//!     .await?;
//! assert!(runs.iter().all(|r| r.success()));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use aws_config::SdkConfig;
use aws_sdk_batch::types::{
    ComputeEnvironmentOrder, ContainerProperties, EvaluateOnExit, JobDefinitionType, JqState,
    ResourceRequirement, ResourceType, RetryAction, RetryStrategy,
};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use embatch_formats::run::retry_strategy::{self, On};
use embatch_formats::run::{env, exit};

use crate::Emulator;

/// The Batch resources a run is submitted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchResources {
    /// The (unmanaged) compute environment's ARN.
    pub compute_environment: String,
    /// The job queue's name.
    pub job_queue: String,
    /// The job definition's name.
    pub job_definition: String,
}

/// Creates, under names starting with `prefix`, a service role (the emulator refuses a
/// compute environment without one), an unmanaged compute environment, a job queue and a
/// job definition with the retry strategy of `embatch_formats::run::retry_strategy` (retry
/// on exit codes 75 and 143 and on `Host EC2*`, exit otherwise).
pub async fn create_resources(
    emulator: &Emulator,
    config: &SdkConfig,
    prefix: &str,
) -> anyhow::Result<BatchResources> {
    let batch = aws_sdk_batch::Client::new(config);
    let suffix = format!("{:08x}", rand::random::<u32>());
    let role = create_role(emulator.port(), &format!("{prefix}-batch-service-{suffix}")).await?;

    let compute = batch
        .create_compute_environment()
        .compute_environment_name(format!("{prefix}-ce-{suffix}"))
        .r#type(aws_sdk_batch::types::CeType::Unmanaged)
        .state(aws_sdk_batch::types::CeState::Enabled)
        .service_role(&role)
        .send()
        .await
        .context("creating the compute environment")?;
    let compute_arn = compute
        .compute_environment_arn()
        .context("the compute environment has no ARN")?
        .to_string();

    let job_queue = format!("{prefix}-queue-{suffix}");
    batch
        .create_job_queue()
        .job_queue_name(&job_queue)
        .state(JqState::Enabled)
        .priority(1)
        .compute_environment_order(
            ComputeEnvironmentOrder::builder()
                .order(1)
                .compute_environment(&compute_arn)
                .build(),
        )
        .send()
        .await
        .with_context(|| format!("creating job queue {job_queue}"))?;

    let job_definition = format!("{prefix}-worker-{suffix}");
    batch
        .register_job_definition()
        .job_definition_name(&job_definition)
        .r#type(JobDefinitionType::Container)
        .container_properties(
            ContainerProperties::builder()
                .image("embatch-worker:local")
                .resource_requirements(
                    ResourceRequirement::builder()
                        .r#type(ResourceType::Vcpu)
                        .value("2")
                        .build(),
                )
                .resource_requirements(
                    ResourceRequirement::builder()
                        .r#type(ResourceType::Memory)
                        .value("4096")
                        .build(),
                )
                .build(),
        )
        .retry_strategy(job_retry_strategy())
        .send()
        .await
        .with_context(|| format!("registering job definition {job_definition}"))?;

    Ok(BatchResources {
        compute_environment: compute_arn,
        job_queue,
        job_definition,
    })
}

/// [`retry_strategy::RULES`] as a Batch `RetryStrategy`.
fn job_retry_strategy() -> RetryStrategy {
    let rules = retry_strategy::RULES.iter().map(|rule| {
        let action = if rule.retry {
            RetryAction::Retry
        } else {
            RetryAction::Exit
        };
        let (rule_builder, (_, pattern)) =
            (EvaluateOnExit::builder().action(action), rule.pattern());
        match rule.on {
            On::StatusReason(_) => rule_builder.on_status_reason(pattern),
            On::ExitCode(_) | On::AnyExitCode => rule_builder.on_exit_code(pattern),
            On::AnyReason => rule_builder.on_reason(pattern),
        }
        .build()
    });
    RetryStrategy::builder()
        .attempts(retry_strategy::ATTEMPTS)
        .set_evaluate_on_exit(Some(rules.collect()))
        .build()
}

/// One array child (or plain job) the player ran.
#[derive(Clone, Debug)]
pub struct ChildRun {
    /// The job id Batch would give it: `<job id>:<index>` for array children.
    pub job_id: String,
    /// The array index, or `None` for a plain job.
    pub array_index: Option<usize>,
    /// The manifest number (`EMBATCH_MANIFEST_OFFSET` + index), when the job carries an offset.
    pub manifest: Option<usize>,
    /// The worker's exit code (`None` if it was killed by a signal).
    pub exit_code: Option<i32>,
    /// What the worker wrote to stdout.
    pub stdout: String,
    /// What the worker wrote to stderr.
    pub stderr: String,
}

impl ChildRun {
    /// Whether the worker exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(exit::DONE)
    }
}

/// Panics (a test's check) naming each child of `runs` that did not exit 0, with its stderr.
pub fn assert_all_succeeded(runs: &[ChildRun]) {
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !r.success())
        .map(|r| format!("child {} exited {:?}:\n{}", r.job_id, r.exit_code, r.stderr))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Runs the worker for every child of the given jobs, as AWS Batch would.
#[derive(Clone, Debug)]
pub struct Player {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    parallelism: usize,
}

impl Player {
    /// A player starting `worker` against `emulator`, two children at a time.
    pub fn new(worker: impl AsRef<Path>, emulator: &Emulator) -> Self {
        Self {
            program: worker.as_ref().to_path_buf(),
            args: Vec::new(),
            env: emulator.env(),
            parallelism: 2,
        }
    }

    /// Adds a command-line argument for every child.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds an environment variable for every child (e.g. `RUST_LOG`). The job's own
    /// environment and Batch's variables take precedence.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// How many children run at once (at least 1).
    pub fn parallelism(mut self, n: usize) -> Self {
        self.parallelism = n.max(1);
        self
    }

    /// Reads the jobs back with DescribeJobs and runs every child; returns one [`ChildRun`]
    /// per child in job and index order. A worker that fails is reported, not an error; an
    /// error means a child could not be started or a job is unknown.
    pub async fn play(
        &self,
        batch: &aws_sdk_batch::Client,
        job_ids: &[String],
    ) -> anyhow::Result<Vec<ChildRun>> {
        let children = children(batch, job_ids).await?;
        let mut runs: Vec<(usize, ChildRun)> =
            futures::stream::iter(children.into_iter().enumerate())
                .map(|(i, child)| async move { self.run_child(child).await.map(|r| (i, r)) })
                .buffer_unordered(self.parallelism)
                .try_collect()
                .await?;
        runs.sort_by_key(|(i, _)| *i);
        Ok(runs.into_iter().map(|(_, r)| r).collect())
    }

    async fn run_child(&self, child: Child) -> anyhow::Result<ChildRun> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| (std::ffi::OsString::from("PATH"), p)))
            .envs(self.env.iter().cloned())
            .envs(child.env.iter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = command
            .output()
            .await
            .with_context(|| format!("starting {} for {}", self.program.display(), child.job_id))?;
        Ok(ChildRun {
            job_id: child.job_id,
            array_index: child.array_index,
            manifest: child.manifest,
            exit_code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// One array child (or plain job) as AWS Batch would start it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Child {
    /// `<job id>:<index>` for an array child, the job id for a plain job.
    pub job_id: String,
    /// `AWS_BATCH_JOB_ARRAY_INDEX`, for an array child.
    pub array_index: Option<usize>,
    /// The manifest it embeds (the job's manifest offset plus the index), if the job says.
    pub manifest: Option<usize>,
    /// The job definition's environment overlaid with the job's container overrides, and
    /// Batch's own `AWS_BATCH_JOB_ID` and `AWS_BATCH_JOB_ARRAY_INDEX`.
    pub env: BTreeMap<String, String>,
}

/// Every child of the jobs, in job and index order, with the environment AWS Batch would
/// give it (DescribeJobs, and DescribeJobDefinitions for each definition's environment).
/// The Python stack test (`deploy/emulated_stack.py`) reads them from the `batch-children`
/// binary, so that both players start the same children the same way.
pub async fn children(
    batch: &aws_sdk_batch::Client,
    job_ids: &[String],
) -> anyhow::Result<Vec<Child>> {
    let mut definitions = BTreeMap::new();
    let mut children = Vec::new();
    for ids in job_ids.chunks(100) {
        let out = batch
            .describe_jobs()
            .set_jobs(Some(ids.to_vec()))
            .send()
            .await
            .context("describing the jobs to play")?;
        for id in ids {
            let job = out
                .jobs()
                .iter()
                .find(|j| j.job_id() == Some(id.as_str()))
                .with_context(|| format!("job {id} is unknown to AWS Batch"))?;
            let mut job_env = definition_env(batch, &mut definitions, job).await?;
            job_env.extend(pairs(job.container().map(|c| c.environment())));
            job_children(id, job, job_env, &mut children)?;
        }
    }
    Ok(children)
}

/// The environment of the job's definition, described once per definition.
async fn definition_env(
    batch: &aws_sdk_batch::Client,
    cache: &mut BTreeMap<String, BTreeMap<String, String>>,
    job: &aws_sdk_batch::types::JobDetail,
) -> anyhow::Result<BTreeMap<String, String>> {
    let name = job.job_definition().unwrap_or_default().to_string();
    if !cache.contains_key(&name) {
        let out = batch
            .describe_job_definitions()
            .job_definitions(&name)
            .send()
            .await
            .with_context(|| format!("describing job definition {name}"))?;
        let env = out
            .job_definitions()
            .first()
            .and_then(|d| d.container_properties());
        cache.insert(name.clone(), pairs(env.map(|c| c.environment())));
    }
    Ok(cache[&name].clone())
}

/// Name-value pairs of a container environment, without Batch's own variables (the emulator
/// adds its AWS_BATCH_JOB_ID; those are the player's to set).
fn pairs(env: Option<&[aws_sdk_batch::types::KeyValuePair]>) -> BTreeMap<String, String> {
    env.unwrap_or_default()
        .iter()
        .filter_map(|kv| Some((kv.name()?.to_string(), kv.value()?.to_string())))
        .filter(|(k, _)| !k.starts_with("AWS_BATCH_"))
        .collect()
}

/// The children of one job: one per array index, or the job itself.
fn job_children(
    id: &str,
    job: &aws_sdk_batch::types::JobDetail,
    job_env: BTreeMap<String, String>,
    children: &mut Vec<Child>,
) -> anyhow::Result<()> {
    let offset = job_env
        .get(env::MANIFEST_OFFSET)
        .map(|v| {
            v.parse::<usize>()
                .with_context(|| format!("job {id}: {}={v:?}", env::MANIFEST_OFFSET))
        })
        .transpose()?;
    let child = |job_id: String, index: Option<usize>| {
        let mut env = job_env.clone();
        env.insert(env::JOB_ID.to_string(), job_id.clone());
        if let Some(i) = index {
            env.insert(env::ARRAY_INDEX.to_string(), i.to_string());
        }
        Child {
            job_id,
            array_index: index,
            manifest: offset.map(|o| o + index.unwrap_or(0)),
            env,
        }
    };
    match job.array_properties().and_then(|a| a.size()) {
        Some(size) => {
            children.extend((0..size as usize).map(|i| child(format!("{id}:{i}"), Some(i))))
        }
        None => children.push(child(id.to_string(), None)),
    }
    Ok(())
}

/// Creates an IAM role in the emulator and returns its ARN. The IAM query API is called
/// directly (no IAM SDK client is otherwise needed); the emulator does not check signatures,
/// only reads the service name from the credential scope.
async fn create_role(port: u16, name: &str) -> anyhow::Result<String> {
    const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"batch.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let body = format!(
        "Action=CreateRole&Version=2010-05-08&RoleName={}&AssumeRolePolicyDocument={}",
        form_encode(name),
        form_encode(TRUST)
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .context("connecting to the emulator")?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20250101/{}/iam/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        crate::emulator::REGION,
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    if !response.starts_with("HTTP/1.1 200") && !response.starts_with("HTTP/1.0 200") {
        bail!("creating IAM role {name} in the emulator failed: {response}");
    }
    let arn = response
        .split_once("<Arn>")
        .and_then(|(_, rest)| rest.split_once("</Arn>"))
        .map(|(arn, _)| arn.to_string())
        .with_context(|| format!("no role ARN in the emulator's answer: {response}"))?;
    Ok(arn)
}

/// `application/x-www-form-urlencoded` encoding of a value.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
