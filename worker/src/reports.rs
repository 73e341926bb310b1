//! The child's reports in S3: the failure report (`<n>.failures.jsonl`, from the tally's
//! spool file) and the summary (`<n>.summary.json`), written once every line is accounted.

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use embatch_aws::objects::put;
use embatch_formats::report::ChildSummary;
use embatch_formats::run::RunLayout;

use crate::accounting::Tally;

/// Uploads manifest `n`'s failure report (an empty file when nothing failed, so that its
/// presence tells the child finished), then its summary.
pub async fn upload(
    s3: &aws_sdk_s3::Client,
    layout: &RunLayout,
    tally: &Tally,
    summary: &ChildSummary,
) -> anyhow::Result<()> {
    let n = summary.manifest;
    // From the path, not an open file: the SDK can only retry a body it can reopen.
    let failures = ByteStream::from_path(tally.flushed_report()?)
        .await
        .context("reading the spooled failure report")?;
    put(s3, &layout.failures(n), failures, "application/x-ndjson").await?;
    let json = serde_json::to_vec_pretty(summary).context("serialising the summary")?;
    put(s3, &layout.summary(n), json.into(), "application/json").await
}
