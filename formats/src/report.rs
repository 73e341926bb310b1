//! What the worker reports: one line per failed image, and the final counts of a child.

use serde::{Deserialize, Serialize};

/// One image that could not be embedded, with the reason (a line of `<n>.failures.jsonl`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureLine {
    /// Bucket of the image.
    pub bucket: String,
    /// Key of the image.
    pub key: String,
    /// The ImageId it would have been stored under.
    pub image_id: String,
    /// A stable machine-readable kind, e.g. `not_found`, `corrupt`, `too_many_pixels`.
    pub kind: String,
    /// A human-readable message.
    pub message: String,
}

/// A failure report's bytes (`<n>.failures.jsonl`): how many lines it holds, and the first
/// `keep` of them parsed. Blank lines are not counted.
pub fn read_failures(
    bytes: &[u8],
    keep: usize,
) -> Result<(u64, Vec<FailureLine>), serde_json::Error> {
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty());
    let parsed = lines
        .by_ref()
        .take(keep)
        .map(serde_json::from_slice)
        .collect::<Result<Vec<FailureLine>, _>>()?;
    let count = parsed.len() as u64 + lines.count() as u64;
    Ok((count, parsed))
}

/// The final counts of one array child (`<n>.summary.json`). `written + skipped + failed`
/// equals `images` when the child finished.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildSummary {
    /// The manifest number.
    pub manifest: usize,
    /// Lines in the manifest.
    pub images: u64,
    /// Vectors stored by this attempt.
    pub written: u64,
    /// Already stored with the same ETag and model (resume).
    pub skipped: u64,
    /// Permanent per-image failures (listed in the failure report).
    pub failed: u64,
    /// Wall-clock seconds of the child.
    pub seconds: f64,
    /// Job id (`AWS_BATCH_JOB_ID`), when known.
    pub job_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(key: &str) -> FailureLine {
        FailureLine {
            bucket: "b".into(),
            key: key.into(),
            image_id: key.into(),
            kind: "corrupt".into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn a_failure_report_is_counted_whole_and_parsed_as_far_as_asked() {
        let mut bytes = Vec::new();
        for key in ["a", "b", "c"] {
            serde_json::to_writer(&mut bytes, &line(key)).unwrap();
            bytes.extend_from_slice(b"\n\n");
        }
        let (count, first) = read_failures(&bytes, 2).unwrap();
        assert_eq!((count, first), (3, vec![line("a"), line("b")]));
        assert_eq!(read_failures(&bytes, usize::MAX).unwrap().1.len(), 3);
        assert_eq!(read_failures(b"", 5).unwrap(), (0, vec![]));
        assert!(read_failures(b"{not json}\n", 5).is_err());
    }
}
