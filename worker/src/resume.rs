//! The source of the pipeline: the manifest's lines, minus those that need no work.
//!
//! A line whose `ImageId` an earlier line already has fails as `duplicate_image_id` (the table
//! holds one vector per id). A line whose image is already stored with the same ETag and model
//! is skipped, so a retried or re-run child redoes only what is missing; `--force` turns that
//! check off. Lines are looked up in chunks, as they are pulled, never all at once.

use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use embatch_records::reader::{Provenance, TableReader, MAX_BATCH_GET_KEYS};
use tokio::sync::mpsc;

use crate::accounting::{Outcome, StageTimes};
use crate::manifest::{Manifest, WorkItem};
use crate::pipeline::StageContext;
use crate::shutdown::StopReason;
use crate::Fatal;

/// What an already-stored vector must match to be kept.
#[derive(Clone, Debug)]
pub struct ResumeCheck {
    /// The reader of the vector table.
    pub reader: TableReader,
    /// sha256 of the model in use.
    pub model_sha256: String,
}

/// Whether the stored vector of `item` was computed from the same object and model.
pub fn is_current(item: &WorkItem, stored: Option<&Provenance>, model_sha256: &str) -> bool {
    stored.is_some_and(|p| {
        p.source_etag.as_deref() == Some(item.line.etag.as_str())
            && p.model_sha256.as_deref() == Some(model_sha256)
    })
}

/// The source stage: feeds `output` with the lines that need computing. `current` is `None`
/// under `--force`.
pub async fn run(
    manifest: Arc<Manifest>,
    current: Option<ResumeCheck>,
    output: mpsc::Sender<WorkItem>,
    cx: StageContext,
) {
    let StageContext { tally, stop } = cx;
    let mut lines = manifest.lines();
    loop {
        let mut chunk: Vec<WorkItem> = lines
            .by_ref()
            .take(MAX_BATCH_GET_KEYS)
            .filter_map(Result::ok)
            .collect();
        if chunk.is_empty() || stop.is_stopped() {
            return;
        }
        chunk.retain(|item| match manifest.duplicate_of(item.line_no) {
            Some(d) => {
                let message = format!(
                    "{}: ImageId {:?} is also the ImageId of line {} of {}; only that line is embedded",
                    item.line.uri(),
                    item.line.image_id,
                    d.first_line,
                    manifest.source()
                );
                tally.fail(item, "duplicate_image_id", message);
                false
            }
            None => true,
        });
        if let Some(current) = &current {
            let started = Instant::now();
            let ids: Vec<String> = chunk.iter().map(|i| i.line.image_id.clone()).collect();
            let stored = tokio::select! {
                _ = stop.stopped() => return,
                stored = current.reader.provenance(&ids) => stored,
            };
            StageTimes::add(&tally.times.resume, started.elapsed());
            let stored = match stored {
                Ok(stored) => stored,
                Err(e) => {
                    let error = anyhow!("checking which images are already stored: {e}");
                    let fatal = if e.is_transient() {
                        Fatal::Transient(error)
                    } else {
                        Fatal::Permanent(error)
                    };
                    stop.stop(StopReason::Failed(fatal));
                    return;
                }
            };
            chunk.retain(|item| {
                let keep =
                    !is_current(item, stored.get(&item.line.image_id), &current.model_sha256);
                if !keep {
                    tally.add(Outcome::Skipped, 1);
                }
                keep
            });
        }
        for item in chunk {
            tokio::select! {
                _ = stop.stopped() => return,
                sent = output.send(item) => if sent.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embatch_formats::manifest::ManifestLine;

    #[test]
    fn only_the_same_etag_and_model_count_as_current() {
        let item = WorkItem {
            line_no: 1,
            line: ManifestLine {
                bucket: "b".into(),
                key: "k".into(),
                size: 1,
                etag: "e".into(),
                image_id: "k".into(),
            },
        };
        let p = |etag: Option<&str>, model: Option<&str>| Provenance {
            source_etag: etag.map(str::to_string),
            model_sha256: model.map(str::to_string),
        };
        assert!(is_current(&item, Some(&p(Some("e"), Some("m"))), "m"));
        assert!(!is_current(&item, Some(&p(Some("other"), Some("m"))), "m"));
        assert!(!is_current(
            &item,
            Some(&p(Some("e"), Some("other-model"))),
            "m"
        ));
        assert!(
            !is_current(&item, Some(&p(None, None)), "m"),
            "an item of the original sample is recomputed"
        );
        assert!(!is_current(&item, None, "m"));
    }
}
