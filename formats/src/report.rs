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
