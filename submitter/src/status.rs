//! Following a submitted run: the Batch state of every child, and the counts the workers
//! reported.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use embatch_aws::objects::get_if_exists;
use embatch_formats::report::{read_failures, ChildSummary, FailureLine};
use embatch_formats::run::{RunLayout, RunPlan};
use embatch_formats::s3uri::S3Uri;

use crate::{Clients, InputError};

/// The state of the children of a planned job the submitter never submitted (it stopped).
pub const NOT_SUBMITTED: &str = "NOT_SUBMITTED";
/// States in which a child is finished (or never going to run).
const DONE_STATES: [&str; 3] = ["SUCCEEDED", "FAILED", NOT_SUBMITTED];
/// How many failure lines and failed children the status shows.
const EXAMPLES: usize = 5;
/// How many report objects are read at once.
const READ_CONCURRENCY: usize = 16;
/// DescribeJobs takes at most 100 job ids.
const DESCRIBE_BATCH: usize = 100;

/// One child that ended FAILED in Batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedChild {
    /// Its manifest number.
    pub manifest: usize,
    /// Its job id (`<array job id>:<index>` for array children).
    pub job_id: String,
    /// Batch's status reason, if any.
    pub reason: Option<String>,
}

/// The state of one submitted job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobState {
    /// Job id.
    pub job_id: String,
    /// The job's own status.
    pub status: String,
    /// Children per state (a plain job counts as its one child).
    pub children: BTreeMap<String, u64>,
}

/// The totals of the workers' reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReportTotals {
    /// Manifests with a `<n>.summary.json`.
    pub summaries: usize,
    /// Images in those manifests.
    pub images: u64,
    /// Vectors written.
    pub written: u64,
    /// Images skipped (already stored).
    pub skipped: u64,
    /// Images failed, per the summaries.
    pub failed: u64,
    /// Lines in all `<n>.failures.jsonl` (also counts children that died before a summary).
    pub failure_lines: u64,
    /// A few of those lines.
    pub failure_examples: Vec<FailureLine>,
}

/// The status of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunStatus {
    /// The run id.
    pub run_id: String,
    /// The run's folder.
    pub run_uri: String,
    /// Manifests (= children) in the run.
    pub manifests: usize,
    /// Children per Batch state over all jobs.
    pub children: BTreeMap<String, u64>,
    /// Every job.
    pub jobs: Vec<JobState>,
    /// Children that FAILED in Batch (the first few).
    pub failed_children: Vec<FailedChild>,
    /// What the workers reported.
    pub reports: ReportTotals,
    /// No child is still queued or running.
    pub finished: bool,
    /// Every child SUCCEEDED.
    pub succeeded: bool,
}

impl RunStatus {
    /// One line for humans.
    pub fn line(&self) -> String {
        let states: Vec<String> = self
            .children
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        format!(
            "run {}: {} children ({}); reports {}/{}: {} written, {} skipped, {} failed",
            self.run_id,
            self.manifests,
            states.join(", "),
            self.reports.summaries,
            self.manifests,
            self.reports.written,
            self.reports.skipped,
            self.reports.failed.max(self.reports.failure_lines),
        )
    }
}

/// The layout of a run named by `run` (a run id under `runs`, or the run's `s3://` folder).
pub fn locate(run: &str, runs: Option<&S3Uri>) -> Result<RunLayout, InputError> {
    if run.starts_with("s3://") {
        let root = S3Uri::parse(run).map_err(|e| InputError(e.to_string()))?;
        return Ok(RunLayout::from_root(root));
    }
    let runs = runs.ok_or_else(|| {
        InputError(format!(
            "cannot find run {run:?}: give --bucket or --runs-uri, or the run's s3:// folder"
        ))
    })?;
    Ok(RunLayout::new(runs, run))
}

/// Reads `run.json`.
pub async fn load_plan(s3: &aws_sdk_s3::Client, layout: &RunLayout) -> anyhow::Result<RunPlan> {
    let uri = layout.plan();
    let bytes = match get_if_exists(s3, &uri).await? {
        Some(bytes) => bytes,
        None => {
            return Err(
                InputError(format!("no run at {}: {uri} does not exist", layout.root)).into(),
            )
        }
    };
    serde_json::from_slice(&bytes).with_context(|| format!("reading the run plan {uri}"))
}

/// The reports read by earlier polls, by key, with the ETag each had. A poll lists the reports
/// and GETs only those that are new or whose ETag changed (a retried child rewrites its
/// reports), so that following a run of 10,000 children costs one `run.json` GET, one LIST
/// per 1,000 reports, the GETs of the reports written since the last poll, and one
/// `DescribeJobs` per 100 jobs, instead of 20,000 GETs a poll.
#[derive(Debug, Default)]
pub struct ReportCache {
    seen: HashMap<String, (String, Report)>,
}

/// The status of the run in `layout`; `cache` keeps what this poll read for the next.
pub async fn run_status(
    clients: &Clients,
    layout: &RunLayout,
    cache: &mut ReportCache,
) -> anyhow::Result<RunStatus> {
    let plan = load_plan(&clients.s3, layout).await?;
    let (jobs, failed_children) = job_states(&clients.batch, &plan).await?;
    let reports = read_reports(&clients.s3, layout, cache).await?;

    let mut children: BTreeMap<String, u64> = BTreeMap::new();
    for job in &jobs {
        for (state, n) in &job.children {
            *children.entry(state.clone()).or_default() += n;
        }
    }
    let total: u64 = children.values().sum();
    let done: u64 = DONE_STATES
        .iter()
        .map(|s| children.get(*s).copied().unwrap_or(0))
        .sum();
    let succeeded = children.get("SUCCEEDED").copied().unwrap_or(0);
    Ok(RunStatus {
        run_id: plan.run_id,
        run_uri: plan.run_uri,
        manifests: plan.manifests,
        finished: total == plan.manifests as u64 && done == total,
        succeeded: total == plan.manifests as u64 && succeeded == total,
        children,
        jobs,
        failed_children,
        reports,
    })
}

/// DescribeJobs for every job of the plan; ListJobs for the failed children of arrays.
async fn job_states(
    batch: &aws_sdk_batch::Client,
    plan: &RunPlan,
) -> anyhow::Result<(Vec<JobState>, Vec<FailedChild>)> {
    let described = describe_jobs(batch, plan).await?;
    let mut states = Vec::with_capacity(plan.jobs.len());
    let mut failed = Vec::new();
    for submitted in &plan.jobs {
        let Some(job_id) = &submitted.job_id else {
            // Planned, never submitted: the submitter stopped before it.
            states.push(JobState {
                job_id: String::new(),
                status: NOT_SUBMITTED.to_string(),
                children: BTreeMap::from([(
                    NOT_SUBMITTED.to_string(),
                    submitted.array_size.unwrap_or(1) as u64,
                )]),
            });
            continue;
        };
        let job = described.get(job_id).with_context(|| {
            format!(
                "job {job_id} ({}) of run {} is unknown to AWS Batch",
                submitted.job_name, plan.run_id
            )
        })?;
        let status = job
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        let mut children = BTreeMap::new();
        match submitted.array_size {
            None => {
                children.insert(status.clone(), 1);
                if status == "FAILED" {
                    failed.push(FailedChild {
                        manifest: submitted.manifest_offset,
                        job_id: job_id.clone(),
                        reason: job.status_reason().map(str::to_string),
                    });
                }
            }
            Some(size) => {
                children = array_children(job, &status, size);
                if children.get("FAILED").is_some_and(|&n| n > 0) && failed.len() < EXAMPLES {
                    failed.extend(failed_children(batch, job_id, submitted.manifest_offset).await?);
                }
            }
        }
        states.push(JobState {
            job_id: job_id.clone(),
            status,
            children,
        });
    }
    failed.truncate(EXAMPLES);
    Ok((states, failed))
}

/// Every submitted job of the plan, by id (DescribeJobs, 100 ids per request).
async fn describe_jobs(
    batch: &aws_sdk_batch::Client,
    plan: &RunPlan,
) -> anyhow::Result<BTreeMap<String, aws_sdk_batch::types::JobDetail>> {
    let mut described = BTreeMap::new();
    let ids: Vec<String> = plan.jobs.iter().filter_map(|j| j.job_id.clone()).collect();
    for ids in ids.chunks(DESCRIBE_BATCH) {
        let out = batch
            .describe_jobs()
            .set_jobs(Some(ids.to_vec()))
            .send()
            .await
            .with_context(|| format!("describing the jobs of run {}", plan.run_id))?;
        for job in out.jobs() {
            described.insert(job.job_id().unwrap_or_default().to_string(), job.clone());
        }
    }
    Ok(described)
}

/// An array job's children per state: its status summary, or (not yet summarised) all
/// `size` children where the parent is.
fn array_children(
    job: &aws_sdk_batch::types::JobDetail,
    status: &str,
    size: usize,
) -> BTreeMap<String, u64> {
    let summary = job.array_properties().and_then(|a| a.status_summary());
    match summary {
        Some(summary) if summary.values().any(|&n| n > 0) => summary
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(state, &n)| (state.clone(), n as u64))
            .collect(),
        _ => BTreeMap::from([(status.to_string(), size as u64)]),
    }
}

/// The FAILED children of an array job, all pages (AWS paginates ListJobs; the emulator
/// does not).
async fn failed_children(
    batch: &aws_sdk_batch::Client,
    array_job_id: &str,
    offset: usize,
) -> anyhow::Result<Vec<FailedChild>> {
    let mut pages = batch
        .list_jobs()
        .array_job_id(array_job_id)
        .job_status(aws_sdk_batch::types::JobStatus::Failed)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page =
            page.with_context(|| format!("listing the failed children of {array_job_id}"))?;
        for child in page.job_summary_list() {
            let job_id = child.job_id().unwrap_or_default().to_string();
            // The index is in arrayProperties on AWS; the emulator only has it in the id.
            let index = child
                .array_properties()
                .and_then(|a| a.index())
                .map(|i| i as usize)
                .or_else(|| job_id.rsplit_once(':').and_then(|(_, i)| i.parse().ok()));
            out.push(FailedChild {
                manifest: offset + index.unwrap_or(0),
                job_id,
                reason: child.status_reason().map(str::to_string),
            });
        }
    }
    out.sort_by_key(|c| c.manifest);
    Ok(out)
}

/// Sums every `<n>.summary.json` and counts every `<n>.failures.jsonl` under `reports/`,
/// reading only what `cache` does not hold at its current ETag.
async fn read_reports(
    s3: &aws_sdk_s3::Client,
    layout: &RunLayout,
    cache: &mut ReportCache,
) -> anyhow::Result<ReportTotals> {
    let prefix = layout.root.join("reports/");
    let listed = list_reports(s3, &prefix).await?;
    let stale: Vec<(String, String)> = listed
        .iter()
        .filter(|(key, etag)| {
            etag.is_empty() || cache.seen.get(key).is_none_or(|(seen, _)| seen != etag)
        })
        .cloned()
        .collect();
    let fresh: Vec<(String, String, Report)> = futures::stream::iter(stale)
        .map(|(key, etag)| async {
            let report = read_report(s3, S3Uri::new(prefix.bucket.clone(), key.clone())).await?;
            anyhow::Ok((key, etag, report))
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    for (key, etag, report) in fresh {
        cache.seen.insert(key, (etag, report));
    }
    let mut totals = ReportTotals::default();
    // In key order, so that the failure examples are the same from poll to poll.
    let mut keys: Vec<&String> = listed.iter().map(|(key, _)| key).collect();
    keys.sort();
    for key in keys {
        match &cache.seen[key].1 {
            Report::Summary(s) => {
                totals.summaries += 1;
                totals.images += s.images;
                totals.written += s.written;
                totals.skipped += s.skipped;
                totals.failed += s.failed;
            }
            Report::Failures(count, lines) => {
                totals.failure_lines += count;
                let room = EXAMPLES.saturating_sub(totals.failure_examples.len());
                totals
                    .failure_examples
                    .extend(lines.iter().take(room).cloned());
            }
            Report::None => {}
        }
    }
    Ok(totals)
}

/// Every object under `prefix`: (key, ETag), all pages.
async fn list_reports(
    s3: &aws_sdk_s3::Client,
    prefix: &S3Uri,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(&prefix.bucket)
        .prefix(&prefix.key)
        .max_keys(crate::listing::PAGE_SIZE)
        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
        .into_paginator()
        .send();
    let mut listed = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("listing {prefix}"))?;
        for object in page.contents() {
            let Some(encoded) = object.key() else {
                continue;
            };
            let key = embatch_formats::s3uri::decode_listed_key(encoded)
                .with_context(|| format!("listing {prefix}"))?;
            listed.push((key, object.e_tag().unwrap_or_default().to_string()));
        }
    }
    Ok(listed)
}

/// One report object: a summary, or a failure report's line count and first lines.
async fn read_report(s3: &aws_sdk_s3::Client, uri: S3Uri) -> anyhow::Result<Report> {
    let Some(bytes) = get_if_exists(s3, &uri).await? else {
        return Ok(Report::None);
    };
    if uri.key.ends_with(".summary.json") {
        let summary: ChildSummary = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the worker summary {uri}"))?;
        Ok(Report::Summary(summary))
    } else if uri.key.ends_with(".failures.jsonl") {
        let (count, lines) = read_failures(&bytes, EXAMPLES)
            .with_context(|| format!("reading the failure report {uri}"))?;
        Ok(Report::Failures(count, lines))
    } else {
        Ok(Report::None)
    }
}

/// What one report object holds.
#[derive(Debug)]
enum Report {
    Summary(ChildSummary),
    Failures(u64, Vec<FailureLine>),
    None,
}
