//! The job's share of the machine, and the pools sized from it.
//!
//! On AWS Batch (EC2) a job's vCPUs are CPU shares, not a quota: `available_parallelism()` sees
//! the whole instance, so eight 4-vCPU children on a 32-vCPU instance would each start 32
//! decode and 32 inference threads, and 32 decode threads each holding a large image exceed
//! the job's memory (exit 137, which the retry strategy treats as permanent). So the worker
//! asks, in order, and logs which answer it used:
//!
//! 1. `EMBATCH_JOB_VCPUS` / `EMBATCH_JOB_MEMORY_MIB` (`--job-vcpus` / `--job-memory-mib`),
//!    which both job definitions set from `JobVcpus` / `JobMemoryMiB`;
//! 2. the ECS task metadata endpoint v4 (`ECS_CONTAINER_METADATA_URI_V4`): the *container's*
//!    `Limits` (CPU in 1/1024 vCPU units, memory in MiB), since task-level limits are absent on
//!    Batch EC2;
//! 3. memory: the cgroup's `memory.max` (v2) or `memory.limit_in_bytes` (v1); vCPUs:
//!    `available_parallelism()` (which honours a cgroup CPU quota);
//! 4. the host.
//!
//! [`PoolPlan::new`] then sizes inference and decode threads from the vCPUs, and limits decode
//! threads so that each can hold the largest image the pixel limit admits within the memory:
//! explicit `--decode-threads` / `--infer-threads` still win.

use std::time::Duration;

use serde::Deserialize;

/// Where a figure came from (logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeSource {
    /// `EMBATCH_JOB_VCPUS` / `EMBATCH_JOB_MEMORY_MIB` (or the matching flag).
    JobDefinition,
    /// The ECS container metadata endpoint v4.
    EcsMetadata,
    /// The cgroup (memory limit) or `available_parallelism` (CPU quota or affinity).
    Cgroup,
    /// The machine: no limit found.
    Host,
}

impl SizeSource {
    /// The name logged.
    pub fn name(self) -> &'static str {
        match self {
            SizeSource::JobDefinition => "job definition",
            SizeSource::EcsMetadata => "ECS metadata",
            SizeSource::Cgroup => "cgroup",
            SizeSource::Host => "host",
        }
    }
}

/// The vCPUs and memory reserved for this job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JobResources {
    /// vCPUs (at least 1).
    pub vcpus: usize,
    /// Where `vcpus` came from.
    pub vcpus_from: SizeSource,
    /// Memory in bytes, if any limit was found.
    pub memory: Option<u64>,
    /// Where `memory` came from.
    pub memory_from: SizeSource,
}

/// The environment variable of the ECS container metadata endpoint v4.
pub const ECS_METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// How long the metadata endpoint may take before it is ignored.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

impl JobResources {
    /// Resolves the job's resources (see the module docs); `vcpus` and `memory_mib` are the
    /// job definition's values, when set.
    pub fn resolve(vcpus: Option<u32>, memory_mib: Option<u64>) -> JobResources {
        let metadata = std::env::var(ECS_METADATA_ENV)
            .ok()
            .filter(|_| vcpus.is_none() || memory_mib.is_none())
            .and_then(|uri| container_limits(&uri));
        let (vcpus, vcpus_from) = match (vcpus, metadata.and_then(|m| m.vcpus())) {
            (Some(n), _) => (n as usize, SizeSource::JobDefinition),
            (None, Some(n)) => (n, SizeSource::EcsMetadata),
            (None, None) => {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                (n, SizeSource::Cgroup)
            }
        };
        let (memory, memory_from) = match (memory_mib, metadata.and_then(|m| m.memory)) {
            (Some(mib), _) => (Some(mib << 20), SizeSource::JobDefinition),
            (None, Some(mib)) if mib > 0 => (Some(mib << 20), SizeSource::EcsMetadata),
            _ => match cgroup_memory_limit() {
                Some(bytes) => (Some(bytes), SizeSource::Cgroup),
                None => (None, SizeSource::Host),
            },
        };
        JobResources {
            vcpus: vcpus.max(1),
            vcpus_from,
            memory,
            memory_from,
        }
    }
}

/// The part of the container metadata we read: `{"Limits": {"CPU": 4096, "Memory": 6144}}`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
struct Limits {
    #[serde(rename = "CPU")]
    cpu: Option<f64>,
    #[serde(rename = "Memory")]
    memory: Option<u64>,
}

impl Limits {
    /// CPU units (1024 per vCPU) as whole vCPUs, rounded up; none for 0 (unlimited).
    fn vcpus(self) -> Option<usize> {
        self.cpu
            .filter(|c| *c > 0.0)
            .map(|c| (c / 1024.0).ceil() as usize)
    }
}

#[derive(Deserialize)]
struct ContainerMetadata {
    #[serde(rename = "Limits")]
    limits: Option<Limits>,
}

/// The container's limits from the metadata endpoint at `uri`; `None` (logged) if it does not
/// answer in time or the answer is not what the documentation describes.
fn container_limits(uri: &str) -> Option<Limits> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let answer = runtime.block_on(async {
        tokio::time::timeout(METADATA_TIMEOUT, get(uri))
            .await
            .map_err(|_| format!("no answer within {METADATA_TIMEOUT:?}"))?
    });
    match answer.and_then(|body| {
        serde_json::from_slice::<ContainerMetadata>(&body).map_err(|e| e.to_string())
    }) {
        Ok(metadata) => metadata.limits,
        Err(e) => {
            tracing::warn!(uri, error = %e, "the ECS metadata endpoint gave no container limits");
            None
        }
    }
}

async fn get(uri: &str) -> Result<bytes::Bytes, String> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes())
}

/// The cgroup's memory limit in bytes (v2 `memory.max`, else v1 `memory.limit_in_bytes`);
/// `None` when unlimited or unknown.
fn cgroup_memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let value = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))?;
    // "max" (v2) or a huge number (v1, page-rounded i64::MAX) mean no limit.
    value.trim().parse::<u64>().ok().filter(|&b| b < 1 << 60)
}

/// Bytes a decode thread holds at most per pixel of its image, measured (a 16-bit RGBA PNG:
/// the decoder's 8 bytes, the RGBA8 and RGB8 conversions, the resize; 190 MB at 16 Mpixel,
/// where an RGB8 PNG takes 55 MB and a DCT-scaled JPEG 12 MB).
pub const DECODE_BYTES_PER_PIXEL: u64 = 12;

/// The worker's memory without decode threads: the process, the loaded model (145 MB
/// measured), the SDK and runtime.
pub const BASE_BYTES: u64 = 192 << 20;

/// Bytes one inference thread adds (the plan's per-run state; 4-8 MB measured, doubled).
pub const INFER_THREAD_BYTES: u64 = 16 << 20;

/// The share of the job's memory the plan fills; the rest is headroom (allocator, kernel).
const MEMORY_SHARE: f64 = 0.9;

/// The pools of one child, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolPlan {
    /// Inference threads.
    pub infer_threads: usize,
    /// Decode threads.
    pub decode_threads: usize,
    /// The pixel limit (lowered when even one decode thread would not fit the memory).
    pub max_pixels: u64,
    /// Whether `decode_threads` was limited by memory.
    pub memory_bound: bool,
}

/// What the plan is made from besides the job's resources.
#[derive(Clone, Copy, Debug)]
pub struct PoolRequest {
    /// `--decode-threads`, if given.
    pub decode_threads: Option<usize>,
    /// `--infer-threads`, if given.
    pub infer_threads: Option<usize>,
    /// The pixel limit.
    pub max_pixels: u64,
    /// Whether the pixel limit was given explicitly (then it is never lowered).
    pub max_pixels_explicit: bool,
    /// Bytes of encoded images buffered (`--buffer-mib`).
    pub buffer_bytes: u64,
}

impl PoolPlan {
    /// Threads for `resources`: one inference thread per vCPU; decode threads one per vCPU
    /// too, but no more than the memory holds at [`DECODE_BYTES_PER_PIXEL`] x the pixel limit
    /// each, after [`BASE_BYTES`], the fetch buffer and the inference threads.
    pub fn new(resources: &JobResources, request: &PoolRequest) -> PoolPlan {
        let infer_threads = request.infer_threads.unwrap_or(resources.vcpus).max(1);
        let mut plan = PoolPlan {
            infer_threads,
            decode_threads: request.decode_threads.unwrap_or(resources.vcpus).max(1),
            max_pixels: request.max_pixels,
            memory_bound: false,
        };
        let Some(memory) = resources.memory else {
            return plan;
        };
        let usable = (memory as f64 * MEMORY_SHARE) as u64;
        let fixed = BASE_BYTES + request.buffer_bytes + infer_threads as u64 * INFER_THREAD_BYTES;
        let room = usable.saturating_sub(fixed);
        let per_thread = request
            .max_pixels
            .saturating_mul(DECODE_BYTES_PER_PIXEL)
            .max(1);
        let fit = (room / per_thread) as usize;
        if request.decode_threads.is_none() && fit < plan.decode_threads {
            plan.decode_threads = fit.max(1);
            plan.memory_bound = true;
        }
        if fit == 0 && !request.max_pixels_explicit {
            plan.max_pixels = (room / DECODE_BYTES_PER_PIXEL).max(1);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(vcpus: usize, memory_mib: Option<u64>) -> JobResources {
        JobResources {
            vcpus,
            vcpus_from: SizeSource::JobDefinition,
            memory: memory_mib.map(|m| m << 20),
            memory_from: SizeSource::JobDefinition,
        }
    }

    fn request(max_pixels: u64) -> PoolRequest {
        PoolRequest {
            decode_threads: None,
            infer_threads: None,
            max_pixels,
            max_pixels_explicit: false,
            buffer_bytes: 256 << 20,
        }
    }

    #[test]
    fn threads_follow_the_jobs_vcpus_not_the_host() {
        let plan = PoolPlan::new(&job(4, None), &request(100_000_000));
        assert_eq!((plan.infer_threads, plan.decode_threads), (4, 4));
    }

    #[test]
    fn decode_threads_are_limited_by_what_the_memory_holds() {
        // 8 vCPUs and 6144 MiB at 100 Mpixel (1.2 GB a decode thread): four fit.
        let plan = PoolPlan::new(&job(8, Some(6144)), &request(100_000_000));
        assert_eq!((plan.infer_threads, plan.decode_threads), (8, 4));
        assert!(plan.memory_bound);
        let used = BASE_BYTES
            + (256 << 20)
            + 8 * INFER_THREAD_BYTES
            + 4 * 100_000_000 * DECODE_BYTES_PER_PIXEL;
        assert!(used < 6144 << 20);
        // At 25 Mpixel all eight fit; the stack's default job (4 vCPUs) fits all four.
        assert_eq!(
            PoolPlan::new(&job(8, Some(6144)), &request(25_000_000)).decode_threads,
            8
        );
        assert_eq!(
            PoolPlan::new(&job(4, Some(6144)), &request(100_000_000)).decode_threads,
            4
        );
    }

    #[test]
    fn explicit_threads_win_and_a_tiny_job_lowers_the_pixel_limit() {
        let mut r = request(100_000_000);
        r.decode_threads = Some(8);
        assert_eq!(PoolPlan::new(&job(2, Some(1024)), &r).decode_threads, 8);
        let plan = PoolPlan::new(&job(2, Some(1024)), &request(100_000_000));
        assert_eq!(plan.decode_threads, 1);
        assert!(plan.max_pixels < 100_000_000);
        assert!(plan.max_pixels * DECODE_BYTES_PER_PIXEL <= 1024 << 20);
        let mut explicit = request(100_000_000);
        explicit.max_pixels_explicit = true;
        assert_eq!(
            PoolPlan::new(&job(2, Some(1024)), &explicit).max_pixels,
            100_000_000
        );
    }

    #[test]
    fn metadata_cpu_units_round_up_to_vcpus() {
        let limits = |cpu| Limits {
            cpu: Some(cpu),
            memory: None,
        };
        assert_eq!(limits(4096.0).vcpus(), Some(4));
        assert_eq!(limits(1536.0).vcpus(), Some(2));
        assert_eq!(limits(0.0).vcpus(), None);
        let parsed: ContainerMetadata =
            serde_json::from_str(r#"{"DockerId": "x", "Limits": {"CPU": 2048, "Memory": 4096}}"#)
                .unwrap();
        assert_eq!(
            parsed.limits,
            Some(Limits {
                cpu: Some(2048.0),
                memory: Some(4096)
            })
        );
    }
}
