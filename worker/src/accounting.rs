//! Nothing lost: every manifest line ends in exactly one outcome (written, skipped, failed),
//! counted here; failures go to a JSON Lines report, spooled to a named temporary file so
//! memory does not grow with the number of failures, and uploaded next to the run's manifests
//! from its path (a body the SDK can reopen, so a failed upload is retried).

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use embatch_formats::report::FailureLine;
use serde::Serialize;

use crate::manifest::WorkItem;

/// How one manifest line ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its vector is stored.
    Written,
    /// Already stored with the same ETag and model.
    Skipped,
    /// A permanent per-image failure (in the report).
    Failed,
}

/// Told of outcomes as they are counted: the binary's progress bar on a terminal, or nothing.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// `images` lines are to be accounted.
    fn start(&self, images: u64);
    /// `n` more lines have an outcome.
    fn advance(&self, n: u64);
    /// The stages are over (done or stopped).
    fn finish(&self);
}

/// No display: logs only (tests, and the binary when stderr is not a terminal).
#[derive(Debug)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Running counts of one child, shared by all stages.
#[derive(Debug)]
pub struct Tally {
    images: u64,
    written: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    computed: AtomicU64,
    report: Mutex<BufWriter<std::fs::File>>,
    /// Where the report is spooled (removed when the tally is dropped).
    report_path: tempfile::TempPath,
    progress: Arc<dyn Progress>,
    /// Busy time per stage, summed over parallel workers.
    pub times: StageTimes,
}

/// Busy time of each stage in nanoseconds, summed over the stage's parallel workers.
#[derive(Debug, Default)]
pub struct StageTimes {
    /// Resume lookups in the table.
    pub resume: AtomicU64,
    /// S3 downloads (request to last body byte).
    pub fetch: AtomicU64,
    /// Decode and preprocess.
    pub decode: AtomicU64,
    /// Inference.
    pub infer: AtomicU64,
    /// Table writes.
    pub write: AtomicU64,
}

impl StageTimes {
    /// Adds `elapsed` to `stage`.
    pub fn add(stage: &AtomicU64, elapsed: Duration) {
        stage.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// The counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Lines in the manifest.
    pub images: u64,
    /// Vectors stored by this attempt.
    pub written: u64,
    /// Already stored.
    pub skipped: u64,
    /// Permanent failures.
    pub failed: u64,
    /// Vectors computed and handed to the write stage (written once stored).
    pub computed: u64,
}

impl Counts {
    /// Lines that have an outcome.
    pub fn accounted(&self) -> u64 {
        self.written + self.skipped + self.failed
    }

    /// Whether every line has an outcome.
    pub fn complete(&self) -> bool {
        self.accounted() == self.images
    }
}

impl Tally {
    /// A tally for a manifest of `images` lines; `progress` advances with each outcome.
    pub fn new(images: u64, progress: Arc<dyn Progress>) -> anyhow::Result<Tally> {
        let named = tempfile::NamedTempFile::new()
            .context("creating a temporary file for the failure report")?;
        let spool = named
            .reopen()
            .context("opening the temporary file for the failure report")?;
        progress.start(images);
        Ok(Tally {
            images,
            written: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            computed: AtomicU64::new(0),
            report: Mutex::new(BufWriter::new(spool)),
            report_path: named.into_temp_path(),
            progress,
            times: StageTimes::default(),
        })
    }

    /// Records `n` lines ending as `outcome` (for `Failed`, use [`Tally::fail`]).
    pub fn add(&self, outcome: Outcome, n: u64) {
        let counter = match outcome {
            Outcome::Written => &self.written,
            Outcome::Skipped => &self.skipped,
            Outcome::Failed => &self.failed,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        self.progress.advance(n);
    }

    /// Records a vector computed and handed to the write stage.
    pub fn computed(&self) {
        self.computed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a permanent failure of `item` and appends it to the report.
    pub fn fail(&self, item: &WorkItem, kind: &str, message: impl Into<String>) {
        let failure = FailureLine {
            bucket: item.line.bucket.clone(),
            key: item.line.key.clone(),
            image_id: item.line.image_id.clone(),
            kind: kind.to_string(),
            message: message.into(),
        };
        tracing::debug!(uri = %item.line.uri(), line = item.line_no, kind, message = %failure.message, "image failed");
        {
            let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
            let written = serde_json::to_writer(&mut *report, &failure)
                .map_err(std::io::Error::from)
                .and_then(|()| report.write_all(b"\n"));
            if let Err(e) = written {
                // The count below still records it; the summary then disagrees with the
                // report, which the final check reports as an error.
                tracing::error!(error = %e, "cannot spool the failure report");
            }
        }
        self.add(Outcome::Failed, 1);
    }

    /// The counts now.
    pub fn counts(&self) -> Counts {
        Counts {
            images: self.images,
            written: self.written.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            computed: self.computed.load(Ordering::Relaxed),
        }
    }

    /// Whoever follows the progress.
    pub fn progress(&self) -> &dyn Progress {
        &*self.progress
    }

    /// The failure report so far, flushed to its spool file: what [`crate::reports`] uploads.
    pub fn flushed_report(&self) -> anyhow::Result<&std::path::Path> {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
            .context("flushing the failure report")?;
        Ok(&self.report_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embatch_formats::manifest::ManifestLine;

    fn item(n: usize) -> WorkItem {
        WorkItem {
            line_no: n,
            line: ManifestLine {
                bucket: "b".into(),
                key: format!("k{n}.jpg"),
                size: 1,
                etag: "e".into(),
                image_id: format!("k{n}"),
            },
        }
    }

    #[test]
    fn every_outcome_counts_once_and_failures_are_reported_as_json_lines() {
        let tally = Tally::new(4, Arc::new(NoProgress)).unwrap();
        tally.add(Outcome::Written, 1);
        tally.add(Outcome::Skipped, 1);
        assert!(!tally.counts().complete());
        tally.fail(&item(3), "not_found", "s3://b/k3.jpg does not exist");
        tally.fail(&item(4), "corrupt", "bad \"data\"\nhere");
        let counts = tally.counts();
        assert_eq!((counts.written, counts.skipped, counts.failed), (1, 1, 2));
        assert!(counts.complete());

        tally.report.lock().unwrap().flush().unwrap();
        let text = std::fs::read_to_string(&tally.report_path).unwrap();
        let lines: Vec<FailureLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0].key.as_str(), lines[0].kind.as_str()),
            ("k3.jpg", "not_found")
        );
        assert_eq!(lines[1].message, "bad \"data\"\nhere");
    }
}
