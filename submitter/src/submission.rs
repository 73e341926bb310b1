//! Writing a run's manifests and plan to S3, and submitting its jobs to AWS Batch, once each.

use std::time::Duration;

use anyhow::Context;
use aws_config::retry::RetryConfig;
use aws_sdk_batch::types::{ArrayProperties, ContainerOverrides, KeyValuePair, KeyValuesPair};
use futures::{StreamExt, TryStreamExt};

use embatch_aws::objects::put;
use embatch_aws::retry::{is_throttling, is_transient_sdk_error};
use embatch_aws::sdk_error::describe;
use embatch_formats::run::{env, RunLayout, RunPlan};

use crate::plan::{JobSpec, Planned};
use crate::Clients;

/// How many manifests are uploaded at once.
const WRITE_CONCURRENCY: usize = 16;

/// Uploads manifest `n` of `planned` to `layout.manifest(n)`, a few at once.
pub async fn write_manifests(
    s3: &aws_sdk_s3::Client,
    layout: &RunLayout,
    planned: &Planned,
) -> anyhow::Result<()> {
    futures::stream::iter(0..planned.manifests)
        .map(|n| async move {
            let body = planned
                .manifest(n)
                .with_context(|| format!("reading back manifest {n} of the plan"))?;
            put(s3, &layout.manifest(n), body.into(), "application/x-ndjson").await
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// Writes the run's plan (`run.json`).
pub async fn write_plan(
    s3: &aws_sdk_s3::Client,
    layout: &RunLayout,
    plan: &RunPlan,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec_pretty(plan).expect("a RunPlan always serialises");
    put(s3, &layout.plan(), body.into(), "application/json").await
}

/// What every job of a run is told through its environment.
#[derive(Clone, Debug)]
pub struct JobTarget<'a> {
    /// Job queue name or ARN.
    pub queue: &'a str,
    /// Job definition (name, `name:revision` or ARN).
    pub job_definition: &'a str,
    /// The run id.
    pub run_id: &'a str,
    /// The run's layout.
    pub layout: &'a RunLayout,
    /// The table.
    pub table: &'a str,
    /// The model spec path inside the container.
    pub model_spec: &'a str,
    /// `--replace-model`: set [`env::REPLACE_MODEL`] on the children.
    pub replace_model: bool,
}

/// The job name of job `i` of a run: `embatch-<run-id>-<i>`.
pub fn job_name(run_id: &str, i: usize) -> String {
    format!("embatch-{run_id}-{i}")
}

/// The containerOverrides environment of a job whose index 0 is manifest `manifest_offset`.
pub fn job_environment(target: &JobTarget<'_>, manifest_offset: usize) -> Vec<(String, String)> {
    [
        (env::RUN_ID, target.run_id.to_string()),
        (env::RUN_URI, target.layout.root.to_string()),
        (env::MANIFEST_OFFSET, manifest_offset.to_string()),
        (env::TABLE, target.table.to_string()),
        (env::MODEL_SPEC, target.model_spec.to_string()),
    ]
    .into_iter()
    .chain(
        target
            .replace_model
            .then(|| (env::REPLACE_MODEL, "true".to_string())),
    )
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// How often a `SubmitJob` whose outcome is unknown is sent again.
const SUBMIT_ATTEMPTS: u32 = 4;

/// How long a job whose `SubmitJob` answer was lost is looked for by name before it is sent
/// again: `ListJobs` is eventually consistent, so a job accepted a moment ago may not be listed
/// yet. Looked up after 1, 2, 4, 8 and 5 s.
const LOOKUP_WAITS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(5),
];

/// Submits the jobs of `plan` in order, writing `run.json` before the first and after each, so
/// that a submitter that stops part way leaves a plan naming exactly the jobs that exist.
/// `SubmitJob` has no idempotency token, so the SDK does not retry it: when its answer is lost
/// (a timeout, a broken connection, a 5xx) the job is first looked up by its deterministic name
/// ([`job_name`]), and only sent again if it is not found.
pub async fn submit_jobs(
    clients: &Clients,
    target: &JobTarget<'_>,
    specs: &[JobSpec],
    plan: &mut RunPlan,
) -> anyhow::Result<()> {
    write_plan(&clients.s3, target.layout, plan).await?;
    for (i, spec) in specs.iter().enumerate() {
        let job_id = submit_job(&clients.batch, target, i, spec)
            .await
            .with_context(|| {
                let done: Vec<&str> = plan.jobs.iter().filter_map(|j| j.job_id.as_deref()).collect();
                format!(
                    "submitting job {} (manifests {}..{}); already submitted: {done:?} ({} lists them)",
                    job_name(target.run_id, i),
                    spec.manifest_offset,
                    spec.manifest_offset + spec.manifests,
                    target.layout.plan()
                )
            })?;
        tracing::info!(job = %plan.jobs[i].job_name, %job_id, array_size = ?spec.array_size(), "submitted");
        plan.jobs[i].job_id = Some(job_id);
        write_plan(&clients.s3, target.layout, plan).await?;
    }
    Ok(())
}

/// Submits job `i` once, whatever happens to the answers; returns its job id.
async fn submit_job(
    batch: &aws_sdk_batch::Client,
    target: &JobTarget<'_>,
    i: usize,
    spec: &JobSpec,
) -> anyhow::Result<String> {
    let name = job_name(target.run_id, i);
    let environment: Vec<KeyValuePair> = job_environment(target, spec.manifest_offset)
        .into_iter()
        .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
        .collect();
    let no_retries =
        aws_sdk_batch::config::Builder::default().retry_config(RetryConfig::disabled());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = batch
            .submit_job()
            .job_name(&name)
            .job_queue(target.queue)
            .job_definition(target.job_definition)
            .container_overrides(
                ContainerOverrides::builder()
                    .set_environment(Some(environment.clone()))
                    .build(),
            )
            .tags("embatch:run-id", target.run_id);
        if let Some(size) = spec.array_size() {
            request =
                request.array_properties(ArrayProperties::builder().size(size as i32).build());
        }
        let error = match request
            .customize()
            .config_override(no_retries.clone())
            .send()
            .await
        {
            Ok(out) => {
                return out
                    .job_id()
                    .map(str::to_string)
                    .with_context(|| format!("AWS Batch returned no job id for {name}"))
            }
            Err(e) if !is_transient_sdk_error(&e) => {
                return Err(anyhow::anyhow!("{}", describe(&e)))
            }
            Err(e) => e,
        };
        // Throttled: refused, not accepted. Anything else may have created the job.
        if !is_throttling(&error) {
            tracing::warn!(job = %name, error = %describe(&error), "SubmitJob's answer was lost; looking the job up by name");
            if let Some(id) = find_by_name(batch, target.queue, &name).await? {
                tracing::info!(job = %name, job_id = %id, "found: it was submitted");
                return Ok(id);
            }
        }
        if attempt >= SUBMIT_ATTEMPTS {
            return Err(anyhow::anyhow!(
                "{} (after {attempt} attempts)",
                describe(&error)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
    }
}

/// The id of the job named `name` in `queue`, looked for over [`LOOKUP_WAITS`].
async fn find_by_name(
    batch: &aws_sdk_batch::Client,
    queue: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    for wait in LOOKUP_WAITS {
        tokio::time::sleep(wait).await;
        let mut pages = batch
            .list_jobs()
            .job_queue(queue)
            .filters(
                KeyValuesPair::builder()
                    .name("JOB_NAME")
                    .values(name)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| anyhow::anyhow!("{}", describe(&e)))
                .with_context(|| format!("looking up job {name} in {queue}"))?;
            if let Some(job) = page
                .job_summary_list()
                .iter()
                .find(|j| j.job_name() == Some(name))
            {
                return Ok(job.job_id().map(str::to_string));
            }
        }
    }
    Ok(None)
}
