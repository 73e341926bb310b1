//! Reading this child's manifest: downloaded once (with retries), checked whole before any
//! work starts (a malformed manifest is a configuration error, exit 2), then handed out line by
//! line. Only the raw JSON Lines stay in memory, never a parsed line per image.

use std::collections::HashMap;

use anyhow::anyhow;
use aws_sdk_s3::operation::get_object::GetObjectError;
use bytes::Bytes;
use embatch_aws::retry::{is_throttling, is_transient_sdk_error, RetryPolicy};
use embatch_aws::sdk_error::describe;
use embatch_formats::manifest::{self, ManifestError, ManifestLine};
use embatch_formats::s3uri::S3Uri;

use crate::Fatal;

/// One manifest line on its way through the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    /// 1-based line number in the manifest.
    pub line_no: usize,
    /// The line.
    pub line: ManifestLine,
}

/// A line whose `ImageId` an earlier line of the same manifest already has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The line that is processed for this `ImageId`.
    pub first_line: usize,
}

/// A manifest that parsed completely.
#[derive(Debug)]
pub struct Manifest {
    source: String,
    bytes: Bytes,
    images: u64,
    /// Line number of a duplicate → where its `ImageId` first appears. Usually empty.
    duplicates: HashMap<usize, Duplicate>,
}

impl Manifest {
    /// Downloads `uri`. A missing manifest or a malformed line is [`Fatal::Permanent`];
    /// S3 failing past the retry budget is [`Fatal::Transient`].
    /// Access denied is permanent too, naming `role`.
    pub async fn download(
        s3: &aws_sdk_s3::Client,
        uri: &S3Uri,
        policy: &RetryPolicy,
        role: &str,
    ) -> Result<Manifest, Fatal> {
        // Ours to retry (the SDK retried the rest): throttling, and a body cut short.
        let bytes = embatch_aws::retry::retry(policy, ManifestAttempt::is_retried, || async {
            let response = s3
                .get_object()
                .bucket(&uri.bucket)
                .key(&uri.key)
                .send()
                .await
                .map_err(|e| {
                    let (retry, transient) = (is_throttling(&e), is_transient_sdk_error(&e));
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    let missing =
                        matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_)))
                            || status == Some(404);
                    ManifestAttempt::Failed {
                        retry,
                        transient,
                        missing,
                        denied: status == Some(403),
                        message: describe(&e),
                    }
                })?;
            // The SDK does not retry a body cut short: that is an attempt of ours.
            let body = response.body.collect().await.map_err(|e| ManifestAttempt::Failed {
                retry: true,
                transient: true,
                missing: false,
                denied: false,
                message: format!("reading the body: {e}"),
            })?;
            Ok(body.into_bytes())
        })
        .await
        .map_err(|e| match e {
            ManifestAttempt::Failed { missing: true, .. } => {
                Fatal::Permanent(anyhow!("manifest {uri} does not exist"))
            }
            ManifestAttempt::Failed { denied: true, .. } => Fatal::Permanent(anyhow!(
                "access denied reading manifest {uri}: {role} needs s3:GetObject on the run's manifests"
            )),
            ManifestAttempt::Failed {
                transient: true,
                message,
                ..
            } => Fatal::Transient(anyhow!("downloading manifest {uri}: {message}")),
            ManifestAttempt::Failed { message, .. } => {
                Fatal::Permanent(anyhow!("downloading manifest {uri}: {message}"))
            }
        })?;
        Manifest::parse(bytes, &uri.to_string()).map_err(|e| Fatal::Permanent(e.into()))
    }

    /// Checks every line of `bytes` and finds duplicate `ImageId`s; `source` names the
    /// manifest in errors.
    pub fn parse(bytes: Bytes, source: &str) -> Result<Manifest, ManifestError> {
        let mut manifest = Manifest {
            source: source.to_string(),
            bytes,
            images: 0,
            duplicates: HashMap::new(),
        };
        // Only the ids are kept while checking, and only until the check is done.
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        let mut images = 0;
        let mut duplicates = HashMap::new();
        for item in manifest.lines() {
            let item = item?;
            images += 1;
            match first_seen.get(&item.line.image_id) {
                Some(&first_line) => {
                    duplicates.insert(item.line_no, Duplicate { first_line });
                }
                None => {
                    first_seen.insert(item.line.image_id, item.line_no);
                }
            }
        }
        manifest.images = images;
        manifest.duplicates = duplicates;
        Ok(manifest)
    }

    /// Where the manifest came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of images (non-blank lines).
    pub fn images(&self) -> u64 {
        self.images
    }

    /// If line `line_no` repeats an earlier line's `ImageId`: where that line is.
    pub fn duplicate_of(&self, line_no: usize) -> Option<&Duplicate> {
        self.duplicates.get(&line_no)
    }

    /// The lines, parsed one at a time as they are pulled (each `Ok`: the manifest was
    /// checked whole when parsed).
    pub fn lines(&self) -> Lines<'_> {
        Lines(manifest::Lines::new(&self.bytes, &self.source))
    }
}

/// The lines of a [`Manifest`] as [`WorkItem`]s, read by [`embatch_formats::manifest::Lines`].
/// Yields errors only before [`Manifest::parse`] has checked them; afterwards every line parses.
#[derive(Debug)]
pub struct Lines<'a>(manifest::Lines<'a>);

impl Iterator for Lines<'_> {
    type Item = Result<WorkItem, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.0.next()?;
        Some(next.map(|(line_no, line)| WorkItem { line_no, line }))
    }
}

enum ManifestAttempt {
    Failed {
        retry: bool,
        transient: bool,
        missing: bool,
        denied: bool,
        message: String,
    },
}

impl ManifestAttempt {
    fn is_retried(&self) -> bool {
        matches!(self, ManifestAttempt::Failed { retry: true, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embatch_formats::manifest::to_jsonl;

    fn line(key: &str, id: &str) -> ManifestLine {
        ManifestLine {
            bucket: "b".into(),
            key: key.into(),
            size: 1,
            etag: "e".into(),
            image_id: id.into(),
        }
    }

    #[test]
    fn lines_keep_their_manifest_line_numbers_across_blank_lines() {
        let mut bytes = to_jsonl(&[line("a\nnewline.jpg", "a")]);
        bytes.extend_from_slice(b"\n   \n");
        bytes.extend_from_slice(&to_jsonl(&[line("b.jpg", "b")]));
        let m = Manifest::parse(bytes.into(), "m").unwrap();
        assert_eq!(m.images(), 2);
        let items: Vec<_> = m
            .lines()
            .map(|w| w.map(|w| (w.line_no, w.line.key)).unwrap())
            .collect();
        assert_eq!(
            items,
            vec![(1, "a\nnewline.jpg".into()), (4, "b.jpg".into())]
        );
    }

    #[test]
    fn duplicate_ids_point_at_their_first_line() {
        let bytes = to_jsonl(&[
            line("x/1.jpg", "1"),
            line("y.jpg", "y"),
            line("z/1.jpg", "1"),
        ]);
        let m = Manifest::parse(bytes.into(), "m").unwrap();
        assert_eq!(m.duplicate_of(3), Some(&Duplicate { first_line: 1 }));
        assert_eq!(m.duplicate_of(1), None);
        assert_eq!(m.duplicate_of(2), None);
    }

    #[test]
    fn a_malformed_line_names_the_manifest_and_line() {
        let mut bytes = to_jsonl(&[line("a.jpg", "a")]);
        bytes.extend_from_slice(b"{\"bucket\": \"b\"}\n");
        let err = Manifest::parse(bytes.into(), "s3://b/r/manifests/3.jsonl").unwrap_err();
        assert!(
            err.to_string()
                .contains("s3://b/r/manifests/3.jsonl line 2"),
            "{err}"
        );
    }
}
