//! A run: where its files live in S3, what the submitter tells each Batch child, and how the
//! worker's exit code tells AWS Batch whether to retry.
//!
//! ```text
//! <root><run-id>/run.json                    RunPlan, written by the submitter
//! <root><run-id>/manifests/<n>.jsonl         manifest n (0-based across the whole run)
//! <root><run-id>/reports/<n>.failures.jsonl  the worker's failures for manifest n
//! <root><run-id>/reports/<n>.summary.json    the worker's final counts for manifest n
//! ```

use serde::{Deserialize, Serialize};

use crate::s3uri::S3Uri;

/// Environment variables the submitter sets on every job; each is also a worker CLI flag.
pub mod env {
    /// The run id.
    pub const RUN_ID: &str = "EMBATCH_RUN_ID";
    /// `s3://bucket/prefix/<run-id>/`: the run's folder.
    pub const RUN_URI: &str = "EMBATCH_RUN_URI";
    /// Added to the array index to get the manifest number (array jobs hold ≤ 10,000 children).
    pub const MANIFEST_OFFSET: &str = "EMBATCH_MANIFEST_OFFSET";
    /// The DynamoDB table name.
    pub const TABLE: &str = "EMBATCH_TABLE";
    /// Path of the model spec inside the container.
    pub const MODEL_SPEC: &str = "EMBATCH_MODEL_SPEC";
    /// Set by AWS Batch on array children; absent for a plain job (index 0).
    pub const ARRAY_INDEX: &str = "AWS_BATCH_JOB_ARRAY_INDEX";
    /// Set by AWS Batch: the job id (`<array job id>:<index>` for array children).
    pub const JOB_ID: &str = "AWS_BATCH_JOB_ID";
    /// Set by the job definition: the job role's ARN, named when access is denied.
    pub const JOB_ROLE_ARN: &str = "EMBATCH_JOB_ROLE_ARN";
    /// Set by the job definition: the vCPUs reserved for the job (its `JobVcpus`).
    pub const JOB_VCPUS: &str = "EMBATCH_JOB_VCPUS";
    /// Set by the job definition: the memory reserved for the job in MiB (its `JobMemoryMiB`).
    pub const JOB_MEMORY_MIB: &str = "EMBATCH_JOB_MEMORY_MIB";
    /// `true` when the run may overwrite vectors another model computed (`--replace-model`).
    pub const REPLACE_MODEL: &str = "EMBATCH_REPLACE_MODEL";
    /// How the worker computes 3×3 convolutions (`auto`, `winograd`, `im2col`; A/B runs).
    pub const CONV: &str = "EMBATCH_CONV";
}

/// Environment variables `embatch submit` and `embatch status` read their settings from (the
/// stack's outputs, exported as in deploy/README.md); the table is [`env::TABLE`].
pub mod submit_env {
    /// The bucket of the images, and of the run's files unless `--runs-uri` says otherwise.
    pub const BUCKET: &str = "EMBATCH_BUCKET";
    /// The Batch job queue.
    pub const JOB_QUEUE: &str = "EMBATCH_JOB_QUEUE";
    /// The Batch job definition.
    pub const JOB_DEFINITION: &str = "EMBATCH_JOB_DEFINITION";
    /// The S3 prefixes the job role may read, comma-separated (the pre-flight check).
    pub const READABLE_PREFIXES: &str = "EMBATCH_READABLE_PREFIXES";
}

/// Worker exit codes, matched by the job definition's retry strategy.
pub mod exit {
    /// Every manifest line ended written, skipped or failed (failures are in the report).
    pub const DONE: i32 = 0;
    /// A permanent configuration error (bad flags, spec, model checksum, manifest): no retry.
    pub const PERMANENT: i32 = 2;
    /// Infrastructure still failing after retries (S3/DynamoDB): Batch retries the child.
    pub const TRANSIENT: i32 = 75;
    /// Stopped by SIGTERM after flushing what was computed: Batch retries the child.
    pub const INTERRUPTED: i32 = 143;
}

/// The job definition's retry strategy, defined once: the emulated Batch player's job
/// definition is built from it, and a test (`tests/tests/e2e/retry_strategy.rs`) checks the
/// CloudFormation and Terraform job definitions against it. The first matching rule decides.
pub mod retry_strategy {
    use super::exit;

    /// Attempts per child by default (the stacks' `RetryAttempts` / `retry_attempts`).
    pub const ATTEMPTS: i32 = 3;

    /// What one rule matches (AWS Batch `EvaluateOnExit`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum On {
        /// `OnStatusReason`, e.g. `Host EC2*` (the instance went away, a Spot reclaim).
        StatusReason(&'static str),
        /// `OnExitCode`: one code.
        ExitCode(i32),
        /// `OnExitCode: "*"`: any code.
        AnyExitCode,
        /// `OnReason: "*"`: no exit code at all (e.g. the image could not be pulled).
        AnyReason,
    }

    /// One `EvaluateOnExit` rule.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Rule {
        /// What it matches.
        pub on: On,
        /// `RETRY` if true, else `EXIT`.
        pub retry: bool,
    }

    impl Rule {
        /// The rule's field as AWS names it (`OnStatusReason`, `OnExitCode`, `OnReason`) and
        /// its pattern.
        pub fn pattern(&self) -> (&'static str, String) {
            match self.on {
                On::StatusReason(glob) => ("OnStatusReason", glob.to_string()),
                On::ExitCode(code) => ("OnExitCode", code.to_string()),
                On::AnyExitCode => ("OnExitCode", "*".to_string()),
                On::AnyReason => ("OnReason", "*".to_string()),
            }
        }

        /// `RETRY` or `EXIT`.
        pub fn action(&self) -> &'static str {
            if self.retry {
                "RETRY"
            } else {
                "EXIT"
            }
        }
    }

    /// Retry a lost host and the worker's transient (75) and interrupted (143) exits; end on
    /// anything else, with or without an exit code.
    pub const RULES: [Rule; 5] = [
        Rule {
            on: On::StatusReason("Host EC2*"),
            retry: true,
        },
        Rule {
            on: On::ExitCode(exit::TRANSIENT),
            retry: true,
        },
        Rule {
            on: On::ExitCode(exit::INTERRUPTED),
            retry: true,
        },
        Rule {
            on: On::AnyExitCode,
            retry: false,
        },
        Rule {
            on: On::AnyReason,
            retry: false,
        },
    ];
}

/// AWS Batch's largest array size; an array job has 2..=10,000 children.
pub const MAX_ARRAY_SIZE: usize = 10_000;

/// The default folder for runs inside the manifest bucket.
pub const DEFAULT_RUNS_PREFIX: &str = "embatch-runs/";

/// Where one run's files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLayout {
    /// The run's folder, ending in `/`.
    pub root: S3Uri,
}

impl RunLayout {
    /// The layout of `run_id` under `runs` (e.g. `s3://bucket/embatch-runs/`).
    pub fn new(runs: &S3Uri, run_id: &str) -> Self {
        let mut prefix = runs.key.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self {
            root: S3Uri::new(runs.bucket.clone(), format!("{prefix}{run_id}/")),
        }
    }

    /// The layout whose folder is `root` (the value of [`env::RUN_URI`]).
    pub fn from_root(mut root: S3Uri) -> Self {
        if !root.key.ends_with('/') {
            root.key.push('/');
        }
        Self { root }
    }

    /// The submission plan.
    pub fn plan(&self) -> S3Uri {
        self.root.join("run.json")
    }

    /// Manifest number `n`.
    pub fn manifest(&self, n: usize) -> S3Uri {
        self.root.join(&format!("manifests/{n}.jsonl"))
    }

    /// The failure report of manifest `n`.
    pub fn failures(&self, n: usize) -> S3Uri {
        self.root.join(&format!("reports/{n}.failures.jsonl"))
    }

    /// The final counts of manifest `n`.
    pub fn summary(&self, n: usize) -> S3Uri {
        self.root.join(&format!("reports/{n}.summary.json"))
    }
}

/// The model spec path inside the worker's image (docker/Dockerfile puts it there): the
/// worker's default, and what the submitter tells it unless `--model-spec` says otherwise.
pub const DEFAULT_MODEL_SPEC: &str = "/opt/embatch/models/resnet18-v2.toml";

/// The current UTC time in RFC 3339 (`2026-12-01T10:15:00.123Z`): the table's `Created` and
/// the times in `run.json`.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats every UTC time")
}

/// A new run id: UTC time to the second plus 24 random bits, e.g. `20261122T101500Z-3fa9c1`.
/// Sorts by time; unique enough that two submitters never share one.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = now.format(&fmt).expect("the format is valid");
    format!("{stamp}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The submission plan of a run (`run.json`): what `status` reads to follow the run. The
/// submitter writes it before the first `SubmitJob`, every job listed without an id, and again
/// after each job is submitted: a submitter that stops part way leaves a plan that says which
/// jobs exist.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    /// The run id.
    pub run_id: String,
    /// The run's folder (`s3://bucket/prefix/<run-id>/`).
    pub run_uri: String,
    /// The table vectors are written to.
    pub table: String,
    /// Images in all manifests.
    pub images: u64,
    /// Number of manifests.
    pub manifests: usize,
    /// The submitted jobs, in manifest order.
    pub jobs: Vec<SubmittedJob>,
    /// When the run was submitted (RFC 3339 UTC).
    pub submitted_at: String,
}

/// One Batch job of a run: a plain job (one manifest) or an array job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedJob {
    /// The Batch job id; `None` while (or if) the job is not submitted.
    pub job_id: Option<String>,
    /// The job name (carries the run id).
    pub job_name: String,
    /// The manifest number of index 0 ([`env::MANIFEST_OFFSET`]).
    pub manifest_offset: usize,
    /// Array size, or `None` for a plain job.
    pub array_size: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keys_follow_the_documented_shape() {
        let l = RunLayout::new(&S3Uri::new("b", "runs"), "r1");
        assert_eq!(
            l.manifest(7).to_string(),
            "s3://b/runs/r1/manifests/7.jsonl"
        );
        assert_eq!(
            l.failures(7).to_string(),
            "s3://b/runs/r1/reports/7.failures.jsonl"
        );
        assert_eq!(
            l.summary(0).to_string(),
            "s3://b/runs/r1/reports/0.summary.json"
        );
        assert_eq!(l.plan().to_string(), "s3://b/runs/r1/run.json");
        assert_eq!(RunLayout::from_root(S3Uri::new("b", "runs/r1")), l);
        assert_eq!(RunLayout::new(&S3Uri::new("b", ""), "r1").root.key, "r1/");
    }

    #[test]
    fn run_ids_are_distinct_and_time_ordered_in_shape() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), "20261122T101500Z-3fa9c1".len());
        assert!(a.chars().nth(8) == Some('T') && a.contains("Z-"), "{a}");
    }
}
