//! Writing a run's manifests and plan to S3, and submitting its jobs to AWS Batch.

use anyhow::Context;
use aws_sdk_batch::types::{ArrayProperties, ContainerOverrides, KeyValuePair};
use futures::{StreamExt, TryStreamExt};

use embatch_records::manifest::{to_jsonl, ManifestLine};
use embatch_records::run::{env, RunLayout, RunPlan, SubmittedJob};
use embatch_records::s3uri::S3Uri;

use crate::plan::JobSpec;

/// How many manifests are uploaded at once.
const WRITE_CONCURRENCY: usize = 16;

/// Writes manifest `n` of `chunks` to `layout.manifest(n)`, concurrently.
pub async fn write_manifests(
    s3: &aws_sdk_s3::Client,
    layout: &RunLayout,
    chunks: &[&[ManifestLine]],
) -> anyhow::Result<()> {
    futures::stream::iter(chunks.iter().enumerate())
        .map(|(n, lines)| async move {
            put(
                s3,
                &layout.manifest(n),
                to_jsonl(lines),
                "application/x-ndjson",
            )
            .await
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
    put(s3, &layout.plan(), body, "application/json").await
}

async fn put(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    body: Vec<u8>,
    content_type: &str,
) -> anyhow::Result<()> {
    s3.put_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .content_type(content_type)
        .body(body.into())
        .send()
        .await
        .with_context(|| format!("writing {uri}"))?;
    Ok(())
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
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Submits the jobs in order. On a failure the error names the jobs already submitted, so
/// they can be cancelled or followed.
pub async fn submit_jobs(
    batch: &aws_sdk_batch::Client,
    target: &JobTarget<'_>,
    jobs: &[JobSpec],
) -> anyhow::Result<Vec<SubmittedJob>> {
    let mut submitted: Vec<SubmittedJob> = Vec::with_capacity(jobs.len());
    for (i, spec) in jobs.iter().enumerate() {
        let name = job_name(target.run_id, i);
        let environment = job_environment(target, spec.manifest_offset)
            .into_iter()
            .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
            .collect();
        let mut request = batch
            .submit_job()
            .job_name(&name)
            .job_queue(target.queue)
            .job_definition(target.job_definition)
            .container_overrides(
                ContainerOverrides::builder()
                    .set_environment(Some(environment))
                    .build(),
            )
            .tags("embatch:run-id", target.run_id);
        if let Some(size) = spec.array_size() {
            request =
                request.array_properties(ArrayProperties::builder().size(size as i32).build());
        }
        let out = request.send().await.map_err(|e| {
            let done: Vec<&str> = submitted.iter().map(|j| j.job_id.as_str()).collect();
            anyhow::Error::new(e).context(format!(
                "submitting job {name} (manifests {}..{}); already submitted: {done:?}",
                spec.manifest_offset,
                spec.manifest_offset + spec.manifests
            ))
        })?;
        let job_id = out
            .job_id()
            .with_context(|| format!("AWS Batch returned no job id for {name}"))?
            .to_string();
        tracing::info!(job = %name, %job_id, array_size = ?spec.array_size(), "submitted");
        submitted.push(SubmittedJob {
            job_id,
            job_name: name,
            manifest_offset: spec.manifest_offset,
            array_size: spec.array_size(),
        });
    }
    Ok(submitted)
}
