//! `export --format parquet`: the table as Parquet files in a directory or under an S3 prefix.
//!
//! To S3, each file is written to a local staging directory, uploaded with one PutObject when
//! it is complete and deleted, so the local disk holds one file (at most
//! `--rows-per-file` rows) and memory one row group. The summary file goes last: an export
//! prefix holding `_embatch-export.json` is complete, and it names its files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use embatch_aws::objects;
use embatch_formats::s3uri::S3Uri;
use embatch_records::parquet::{ParquetOptions, Part, PartWriter, Summary, SUMMARY_FILE};
use embatch_records::reader::TableReader;
use futures::StreamExt;

/// Where an export goes.
pub enum Destination {
    /// A local directory (created if missing, refused if it holds an export).
    Dir(PathBuf),
    /// An S3 prefix; the files are `prefix` + their names.
    S3 {
        /// The client to upload with.
        s3: aws_sdk_s3::Client,
        /// `s3://bucket/prefix/`.
        prefix: S3Uri,
    },
}

impl Destination {
    /// Parses `--out`: `s3://…` is a prefix (a `/` is added if it lacks one), anything else a
    /// directory. The S3 client is made only for a prefix.
    pub async fn parse(
        out: &str,
        s3: impl std::future::Future<Output = aws_sdk_s3::Client>,
    ) -> anyhow::Result<Self> {
        if !out.starts_with("s3://") {
            return Ok(Self::Dir(PathBuf::from(out)));
        }
        let mut prefix = S3Uri::parse(out).with_context(|| format!("--out {out}"))?;
        if !prefix.key.is_empty() && !prefix.key.ends_with('/') {
            prefix.key.push('/');
        }
        Ok(Self::S3 {
            s3: s3.await,
            prefix,
        })
    }

    /// Where the summary says the export is.
    pub fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => dir.display().to_string(),
            Self::S3 { prefix, .. } => prefix.to_string(),
        }
    }
}

/// Writes every record of the table as Parquet to `to`.
pub async fn export(
    reader: &TableReader,
    segments: u32,
    to: &Destination,
    options: ParquetOptions,
) -> anyhow::Result<Summary> {
    let staging;
    let dir = match to {
        Destination::Dir(dir) => dir.as_path(),
        Destination::S3 { .. } => {
            staging = tempfile::tempdir().context("making a staging directory")?;
            staging.path()
        }
    };
    let mut writer = PartWriter::create(dir, options)?;
    let mut records = std::pin::pin!(reader.scan(segments));
    while let Some(record) = records.next().await {
        if let Some(part) = writer.push(record?)? {
            upload(to, &part).await?;
        }
    }
    let (last, summary) = writer.finish()?;
    if let Some(part) = last {
        upload(to, &part).await?;
    }
    if let Destination::S3 { s3, prefix } = to {
        let body = ByteStream::from(summary.to_json().into_bytes());
        objects::put(s3, &prefix.join(SUMMARY_FILE), body, "application/json").await?;
    }
    Ok(summary)
}

/// Uploads a finished file to S3 and deletes the local copy; nothing for a directory.
async fn upload(to: &Destination, part: &Part) -> anyhow::Result<()> {
    let Destination::S3 { s3, prefix } = to else {
        return Ok(());
    };
    let body = ByteStream::from_path(&part.path)
        .await
        .with_context(|| format!("reading {}", part.path.display()))?;
    let uri = prefix.join(&part.name);
    objects::put(s3, &uri, body, "application/vnd.apache.parquet").await?;
    remove(&part.path)
}

fn remove(path: &Path) -> anyhow::Result<()> {
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}
