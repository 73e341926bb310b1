//! Checks made before anything is written or submitted: the buckets, the job queue, the job
//! definition and the table exist.

use anyhow::Context;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_s3::operation::head_bucket::HeadBucketError;

use crate::InputError;

/// Every bucket answers HeadBucket.
pub async fn check_buckets<'a>(
    s3: &aws_sdk_s3::Client,
    buckets: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<()> {
    let mut seen: Vec<&str> = Vec::new();
    for bucket in buckets {
        if seen.contains(&bucket) {
            continue;
        }
        seen.push(bucket);
        match s3.head_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if matches!(e.as_service_error(), Some(HeadBucketError::NotFound(_)))
                    || status == Some(404)
                {
                    return Err(InputError(format!("bucket {bucket:?} does not exist")).into());
                }
                if status == Some(403) {
                    return Err(InputError(format!("no access to bucket {bucket:?}")).into());
                }
                return Err(anyhow::Error::new(e).context(format!("checking bucket {bucket:?}")));
            }
        }
    }
    Ok(())
}

/// The job queue exists (by name or ARN).
pub async fn check_job_queue(batch: &aws_sdk_batch::Client, queue: &str) -> anyhow::Result<()> {
    let out = batch
        .describe_job_queues()
        .job_queues(queue)
        .send()
        .await
        .with_context(|| format!("checking job queue {queue:?}"))?;
    let found = out
        .job_queues()
        .iter()
        .any(|q| q.job_queue_name() == Some(queue) || q.job_queue_arn() == Some(queue));
    if !found {
        return Err(InputError(format!("job queue {queue:?} does not exist")).into());
    }
    Ok(())
}

/// The job definition exists and is active: a name (any active revision), `name:revision`,
/// or an ARN.
pub async fn check_job_definition(
    batch: &aws_sdk_batch::Client,
    definition: &str,
) -> anyhow::Result<()> {
    let request = batch.describe_job_definitions().status("ACTIVE");
    let (request, revision) = if definition.starts_with("arn:") {
        (request.job_definitions(definition), None)
    } else {
        match definition.rsplit_once(':') {
            Some((name, revision)) => (request.job_definition_name(name), Some(revision)),
            None => (request.job_definition_name(definition), None),
        }
    };
    let mut pages = request.into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("checking job definition {definition:?}"))?;
        let found = page.job_definitions().iter().any(|d| {
            revision.is_none_or(|r| d.revision().map(|n| n.to_string()).as_deref() == Some(r))
        });
        if found {
            return Ok(());
        }
    }
    Err(InputError(format!(
        "job definition {definition:?} does not exist or is not active"
    ))
    .into())
}

/// The table exists.
pub async fn check_table(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    match dynamodb.describe_table().table_name(table).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(DescribeTableError::ResourceNotFoundException(_))
            ) =>
        {
            Err(InputError(format!("table {table:?} does not exist")).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("checking table {table:?}"))),
    }
}
