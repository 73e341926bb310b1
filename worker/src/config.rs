//! The worker's settings: every one a CLI flag, the run's own also read from the environment
//! the submitter and AWS Batch set (names defined once in [`embatch_formats::run::env`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use embatch_engine::{ConvAlgorithm, Limits};
use embatch_formats::run::{env, RunLayout};
use embatch_formats::s3uri::S3Uri;

use crate::resources::{PoolPlan, PoolRequest};

pub use embatch_formats::run::DEFAULT_MODEL_SPEC;

/// Embeds the images of one manifest of an embatch run and stores the vectors in DynamoDB.
///
/// Run by AWS Batch once per array child: the manifest is
/// `<run-uri>manifests/<manifest-offset + array-index>.jsonl`. Failures go to
/// `<run-uri>reports/<n>.failures.jsonl`, counts to `<run-uri>reports/<n>.summary.json`.
/// Exit codes: 0 every image written, skipped or failed (see the report); 2 configuration
/// error (do not retry); 75 infrastructure still failing after retries; 143 stopped by SIGTERM.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "embatch-worker",
    version,
    after_help = "`embatch-worker embed FILE...` embeds local image files instead (see its --help)."
)]
pub struct Config {
    /// The run's folder, `s3://bucket/prefix/<run-id>/`.
    #[arg(long, env = env::RUN_URI, value_name = "S3_URI")]
    pub run_uri: S3Uri,

    /// The run id, stored with every vector.
    #[arg(long, env = env::RUN_ID)]
    pub run_id: String,

    /// Added to the array index to get the manifest number.
    #[arg(long, env = env::MANIFEST_OFFSET, default_value_t = 0)]
    pub manifest_offset: usize,

    /// This child's index in its array job (absent for a plain job: 0).
    #[arg(long, env = env::ARRAY_INDEX, default_value_t = 0)]
    pub array_index: usize,

    /// The Batch job id, stored with every vector and in the summary.
    #[arg(long, env = env::JOB_ID)]
    pub job_id: Option<String>,

    /// The job role's ARN (set by the job definition), named in access-denied errors.
    #[arg(long, env = env::JOB_ROLE_ARN, value_name = "ARN")]
    pub job_role_arn: Option<String>,

    /// The DynamoDB table vectors are written to.
    #[arg(long, env = env::TABLE)]
    pub table: String,

    /// The model spec (TOML); the model's sha256 is verified before any work.
    #[arg(long, env = env::MODEL_SPEC, default_value = DEFAULT_MODEL_SPEC)]
    pub model_spec: PathBuf,

    /// Send AWS requests here instead of AWS (a local emulator).
    #[arg(long, env = embatch_aws::client::ENDPOINT_URL_ENV, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// AWS region (default: the SDK's provider chain).
    #[arg(long, env = embatch_aws::client::REGION_ENV)]
    pub region: Option<String>,

    /// Recompute every image, even those already stored with the same ETag and model.
    #[arg(long)]
    pub force: bool,

    /// Overwrite vectors another model computed. Without it such a line fails as
    /// `model_mismatch`: the table is keyed by ImageId alone and holds one model's vectors.
    #[arg(long, env = env::REPLACE_MODEL)]
    pub replace_model: bool,

    /// S3 downloads in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub fetch_concurrency: u32,

    /// Attempts per image when its body is cut short or stalls, or S3 keeps throttling past
    /// the SDK's own retries (5 per request, which also cover 5xx, timeouts and resets); then
    /// the child exits 75.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub fetch_attempts: u32,

    /// Seconds one AWS request attempt may take, and one S3 download may go without receiving
    /// a byte, before it is abandoned and retried.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub attempt_timeout_secs: u64,

    /// MiB of encoded image bytes held at once (downloading or waiting to be decoded).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer_mib: u64,

    /// vCPUs reserved for this job (set by the job definition) [default: the ECS container
    /// metadata's limit, else the CPUs this process may run on].
    #[arg(long, env = env::JOB_VCPUS, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub job_vcpus: Option<u32>,

    /// Memory reserved for this job in MiB (set by the job definition) [default: the ECS
    /// container metadata's limit, else the cgroup's, else none].
    #[arg(long, env = env::JOB_MEMORY_MIB, value_parser = clap::value_parser!(u64).range(64..))]
    pub job_memory_mib: Option<u64>,

    /// Threads decoding and preprocessing images [default: the job's vCPUs, fewer if its
    /// memory cannot hold that many images of the pixel limit at once].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub decode_threads: Option<u32>,

    /// Threads running inference (each runs the shared model plan with its own state)
    /// [default: the job's vCPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub infer_threads: Option<u32>,

    /// How 3×3 stride-1 convolutions are computed: `auto` (Winograd F(4x4) or F(2x2) per layer,
    /// as measured fastest), `winograd`, `im2col` (tract's own plan), or `f2` / `f4` (one tile
    /// size everywhere). For A/B runs; `auto` is the measured best.
    #[arg(long, env = env::CONV, default_value_t = ConvAlgorithm::Auto)]
    pub conv: ConvAlgorithm,

    /// Images per inference call [default: the engine's preferred batch].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: Option<u32>,

    /// Largest encoded image accepted, in bytes (checked before and while downloading).
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_ENCODED_BYTES)]
    pub max_encoded_bytes: u64,

    /// Largest image accepted, in pixels (width x height from the header, before decoding)
    /// [default: 100,000,000, lowered if the job's memory cannot hold one such image].
    #[arg(long)]
    pub max_pixels: Option<u64>,

    /// Table write requests (of ≤ 25 items) in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub write_concurrency: u32,

    /// Seconds allowed after SIGTERM to flush computed vectors before exiting 143. Below the
    /// ECS stop timeout (60 s in the launch templates; SIGKILL after it) by 15 s, so that the
    /// exit code, not the kill, decides the retry.
    #[arg(long, default_value_t = 45)]
    pub shutdown_timeout_secs: u64,

    /// Log format: JSON lines (for CloudWatch) or human-readable with a progress bar.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text with a progress bar on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

impl Config {
    /// The manifest number this child embeds.
    pub fn manifest_number(&self) -> usize {
        self.manifest_offset + self.array_index
    }

    /// Where the run's files live.
    pub fn layout(&self) -> RunLayout {
        RunLayout::from_root(self.run_uri.clone())
    }

    /// The input limits handed to the engine, with the pixel limit of `plan`.
    pub fn limits(&self, plan: &PoolPlan) -> Limits {
        Limits {
            max_encoded_bytes: self.max_encoded_bytes,
            max_pixels: plan.max_pixels,
            ..Limits::default()
        }
    }

    /// What the pools are planned from besides the job's resources.
    pub fn pool_request(&self) -> PoolRequest {
        PoolRequest {
            decode_threads: self.decode_threads.map(|n| n as usize),
            infer_threads: self.infer_threads.map(|n| n as usize),
            max_pixels: self.max_pixels.unwrap_or(Limits::DEFAULT_MAX_PIXELS),
            max_pixels_explicit: self.max_pixels.is_some(),
            buffer_bytes: self.buffer_mib.saturating_mul(1024 * 1024),
        }
    }

    /// The job role, for error messages: its ARN, or "the job role" when unknown.
    pub fn role(&self) -> String {
        self.job_role_arn.as_deref().map_or_else(
            || "the job role".to_string(),
            |arn| format!("the job role {arn}"),
        )
    }

    /// See `--attempt-timeout-secs`.
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(self.attempt_timeout_secs)
    }

    /// The grace period after SIGTERM.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(
            [
                "embatch-worker",
                "--run-uri",
                "s3://b/runs/r1/",
                "--run-id",
                "r1",
                "--table",
                "t",
            ]
            .iter()
            .chain(args),
        )
    }

    #[test]
    fn the_manifest_number_is_offset_plus_index() {
        let c = parse(&["--manifest-offset", "10000", "--array-index", "7"]).unwrap();
        assert_eq!(c.manifest_number(), 10007);
        assert_eq!(
            c.layout().manifest(c.manifest_number()).to_string(),
            "s3://b/runs/r1/manifests/10007.jsonl"
        );
    }

    #[test]
    fn a_plain_job_without_an_array_index_is_manifest_offset() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.array_index, 0);
        assert_eq!(c.model_spec, PathBuf::from(DEFAULT_MODEL_SPEC));
        let request = c.pool_request();
        assert_eq!(request.max_pixels, Limits::DEFAULT_MAX_PIXELS);
        assert!(!request.max_pixels_explicit);
    }

    #[test]
    fn bad_values_are_rejected_naming_the_flag() {
        let err = parse(&["--run-uri", "http://x"]).unwrap_err().to_string();
        assert!(err.contains("--run-uri"), "{err}");
        let err = parse(&["--fetch-concurrency", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--fetch-concurrency"), "{err}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
