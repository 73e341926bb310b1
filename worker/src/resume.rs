//! The source of the pipeline: the manifest's lines, minus those that need no work.
//!
//! A line whose `ImageId` an earlier line already has fails as `duplicate_image_id` (the table
//! holds one vector per id). A line whose image is already stored with the same ETag and model
//! is skipped, so a retried or re-run child redoes only what is missing; `--force` turns that
//! check off. A line whose ImageId holds another model's vector fails as `model_mismatch`
//! unless `--replace-model`: the table is keyed by ImageId alone, so one table holds one model
//! (a vector without provenance, as the original sample wrote, is recomputed). Lines are looked
//! up in chunks, as they are pulled, never all at once.

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

/// The table lookup of the source stage, and what it decides.
#[derive(Clone, Debug)]
pub struct ResumeCheck {
    /// The reader of the vector table.
    pub reader: TableReader,
    /// What is done with a line whose ImageId is already stored.
    pub policy: StoredPolicy,
}

/// What is done with a line whose ImageId is already stored.
#[derive(Clone, Debug)]
pub struct StoredPolicy {
    /// sha256 of the model in use.
    pub model_sha256: String,
    /// `--force`: recompute vectors that are already current.
    pub force: bool,
    /// `--replace-model`: overwrite vectors another model computed.
    pub replace_model: bool,
}

/// What the source stage does with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Compute and write its vector.
    Compute,
    /// Already stored from the same object by the same model.
    Skip,
    /// Stored by the model with this sha256, which is not overwritten.
    OtherModel(String),
}

impl StoredPolicy {
    /// The decision for `item`, given what the table holds for its ImageId.
    pub fn decide(&self, item: &WorkItem, stored: Option<&Provenance>) -> Decision {
        let Some(stored) = stored else {
            return Decision::Compute;
        };
        match stored.model_sha256.as_deref() {
            Some(other) if other != self.model_sha256 && !self.replace_model => {
                Decision::OtherModel(other.to_string())
            }
            _ if !self.force && is_current(item, Some(stored), &self.model_sha256) => {
                Decision::Skip
            }
            _ => Decision::Compute,
        }
    }
}

/// Whether the stored vector of `item` was computed from the same object and model.
pub fn is_current(item: &WorkItem, stored: Option<&Provenance>, model_sha256: &str) -> bool {
    stored.is_some_and(|p| {
        p.source_etag.as_deref() == Some(item.line.etag.as_str())
            && p.model_sha256.as_deref() == Some(model_sha256)
    })
}

/// The source stage: feeds `output` with the lines that need computing. `current` is `None`
/// under `--force --replace-model` (nothing stored matters).
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
                match current.policy.decide(item, stored.get(&item.line.image_id)) {
                    Decision::Compute => return true,
                    Decision::Skip => tally.add(Outcome::Skipped, 1),
                    Decision::OtherModel(other) => tally.fail(
                        item,
                        "model_mismatch",
                        other_model(item, &other, &current.policy),
                    ),
                }
                false
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

/// The failure message of a line whose ImageId holds another model's vector.
fn other_model(item: &WorkItem, other: &str, policy: &StoredPolicy) -> String {
    format!(
        "{}: ImageId {:?} already holds a vector of another model (sha256 {other}; this run's is {}); \
         a table holds one model's vectors: use a table per model, or --replace-model to overwrite",
        item.line.uri(),
        item.line.image_id,
        policy.model_sha256
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use embatch_formats::manifest::ManifestLine;

    /// Line 1: `s3://b/k`, ETag `e`, ImageId `k`.
    fn item() -> WorkItem {
        WorkItem {
            line_no: 1,
            line: ManifestLine {
                bucket: "b".into(),
                key: "k".into(),
                size: 1,
                etag: "e".into(),
                image_id: "k".into(),
            },
        }
    }

    #[test]
    fn only_the_same_etag_and_model_count_as_current() {
        let item = item();
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

    #[test]
    fn another_models_vector_is_kept_unless_replace_model() {
        let item = item();
        let stored = |model: Option<&str>| Provenance {
            source_etag: Some("e".into()),
            model_sha256: model.map(str::to_string),
        };
        let policy = |force, replace_model| StoredPolicy {
            model_sha256: "m".into(),
            force,
            replace_model,
        };
        let other = Decision::OtherModel("other".into());
        for force in [false, true] {
            let p = policy(force, false);
            assert_eq!(p.decide(&item, Some(&stored(Some("other")))), other);
            assert_eq!(p.decide(&item, None), Decision::Compute);
            assert_eq!(p.decide(&item, Some(&stored(None))), Decision::Compute);
            let p = policy(force, true);
            assert_eq!(
                p.decide(&item, Some(&stored(Some("other")))),
                Decision::Compute
            );
        }
        assert_eq!(
            policy(false, false).decide(&item, Some(&stored(Some("m")))),
            Decision::Skip
        );
        assert_eq!(
            policy(true, false).decide(&item, Some(&stored(Some("m")))),
            Decision::Compute
        );
    }
}
