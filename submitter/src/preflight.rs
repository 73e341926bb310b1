//! Checks made before anything is written or submitted: the paths are readable by the job role
//! and listable by the caller, the job queue, the job definition and the table exist.

use anyhow::Context;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
use aws_sdk_s3::types::EncodingType;
use embatch_aws::sdk_error::describe;
use embatch_formats::s3uri::S3Uri;

use crate::InputError;

/// Every path lies inside one of the prefixes the job role can read: a path outside them would
/// be listed, and then every one of its images would fail as `access_denied` in the workers.
pub fn check_readable(paths: &[S3Uri], readable: &[S3Uri]) -> Result<(), InputError> {
    let inside = |path: &S3Uri| {
        readable
            .iter()
            .any(|r| r.bucket == path.bucket && path.key.starts_with(&r.key))
    };
    let Some(outside) = paths.iter().find(|p| !inside(p)) else {
        return Ok(());
    };
    let allowed: Vec<String> = readable.iter().map(S3Uri::to_string).collect();
    let slash = readable
        .iter()
        .any(|r| r.bucket == outside.bucket && r.key == format!("{}/", outside.key));
    let hint = if slash {
        format!(
            " A path without a trailing slash is a key prefix ({outside} also matches {outside}-old/...): write {outside}/."
        )
    } else {
        String::new()
    };
    Err(InputError(format!(
        "path {outside} is outside the prefixes the job role can read ({}); its images would all fail as access_denied. Submit paths inside them, or grant the job role s3:GetObject there (the stack's ImagePrefixes).{hint}",
        allowed.join(", ")
    )))
}

/// Every prefix can be listed: one `ListObjectsV2` of at most one key under each. The same
/// permission the run needs (`s3:ListBucket` with `s3:prefix` = the prefix), unlike
/// `HeadBucket`, which AWS authorises as `s3:ListBucket` without a prefix and so fails under a
/// policy that grants listing only below some prefixes.
pub async fn check_listable(s3: &aws_sdk_s3::Client, prefixes: &[S3Uri]) -> anyhow::Result<()> {
    let mut seen: Vec<&S3Uri> = Vec::new();
    for prefix in prefixes {
        if seen.contains(&prefix) {
            continue;
        }
        seen.push(prefix);
        let mut request = s3
            .list_objects_v2()
            .bucket(&prefix.bucket)
            .max_keys(1)
            .encoding_type(EncodingType::Url);
        if !prefix.key.is_empty() {
            request = request.prefix(&prefix.key);
        }
        let Err(e) = request.send().await else {
            continue;
        };
        let status = e.raw_response().map(|r| r.status().as_u16());
        if matches!(
            e.as_service_error(),
            Some(ListObjectsV2Error::NoSuchBucket(_))
        ) || status == Some(404)
        {
            return Err(InputError(format!("bucket {:?} does not exist", prefix.bucket)).into());
        }
        if status == Some(403) {
            let hint = if !prefix.key.is_empty() && !prefix.key.ends_with('/') {
                format!(
                    " (a policy that grants {0}/* does not grant {0}: write the path as {0}/)",
                    prefix.key
                )
            } else {
                String::new()
            };
            return Err(InputError(format!(
                "access denied listing {prefix}: these credentials lack s3:ListBucket on bucket {:?} with prefix {:?}{hint}",
                prefix.bucket, prefix.key
            ))
            .into());
        }
        return Err(anyhow::anyhow!("listing {prefix}: {}", describe(&e)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> S3Uri {
        S3Uri::parse(s).unwrap()
    }

    #[test]
    fn paths_must_lie_inside_a_readable_prefix() {
        let readable = [uri("s3://b/images/"), uri("s3://b/more/images/")];
        assert!(check_readable(
            &[uri("s3://b/images/"), uri("s3://b/more/images/2024/")],
            &readable
        )
        .is_ok());
        let err = check_readable(&[uri("s3://other/photos/")], &readable).unwrap_err();
        assert!(
            err.0.contains("path s3://other/photos/ is outside"),
            "{err}"
        );
        assert!(
            err.0.contains("s3://b/images/, s3://b/more/images/"),
            "{err}"
        );
        let err = check_readable(&[uri("s3://b/images")], &readable).unwrap_err();
        assert!(err.0.contains("write s3://b/images/"), "{err}");
    }
}
