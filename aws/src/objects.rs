//! Small whole objects in S3 (manifests, the run plan, reports): written with one PutObject,
//! read with one GetObject. Errors name the object and describe the SDK error without its
//! raw response ([`crate::sdk_error::describe`]).

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use embatch_formats::s3uri::S3Uri;

use crate::sdk_error::describe;

/// Writes `body` to `uri` with the given content type.
pub async fn put(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    body: ByteStream,
    content_type: &str,
) -> anyhow::Result<()> {
    s3.put_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .content_type(content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("writing {uri}: {}", describe(&e)))?;
    Ok(())
}

/// The object's bytes, or `None` if there is no such key.
pub async fn get_if_exists(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
) -> anyhow::Result<Option<Vec<u8>>> {
    match s3
        .get_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
    {
        Ok(out) => {
            let body = out
                .body
                .collect()
                .await
                .with_context(|| format!("reading {uri}"))?;
            Ok(Some(body.to_vec()))
        }
        Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {uri}: {}", describe(&e))),
    }
}
