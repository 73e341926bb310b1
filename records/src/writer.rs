//! The batched vector table writer.
//!
//! [`TableWriter::write`] takes any number of [`VectorRecord`]s and stores them with
//! `BatchWriteItem`: at most [`MAX_BATCH_WRITE_ITEMS`] per request (DynamoDB's limit, enforced
//! here because emulators do not), up to [`WriterConfig::max_in_flight`] requests at once
//! across every clone of the writer. The SDK retries 5xx answers, timeouts and broken
//! connections; `UnprocessedItems` and throttling that outlasts the SDK are retried here with
//! the shared [`RetryPolicy`] (see [`embatch_aws::retry`] for the layers). When a budget is spent the
//! [`WriteError`] names every `ImageId` that was not written. Nothing is dropped silently.
//!
//! Throttling also slows the writer down: a [`Pacer`] shared by its clones spaces the starts of
//! requests by an interval that doubles (plus 1 ms) on every throttle or unprocessed answer, up
//! to [`WriterConfig::max_pace`], and shrinks by a tenth on every clean success. A fleet of workers
//! writing into a table that is still scaling thus backs off instead of spending its retries.
//!
//! Writing is idempotent: an item is a whole-item put keyed by `ImageId`, so writing the same
//! record again (same image, ETag and model) leaves one identical item.
//!
//! ```no_run
//! use embatch_records::vector::{VectorMetadata, VectorRecord};
//! use embatch_records::writer::{TableWriter, WriterConfig};
//!
//! # async fn example(client: aws_sdk_dynamodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let writer = TableWriter::new(client, "embatch-vectors", WriterConfig::default());
//! let record = VectorRecord {
//!     image_id: "images/cat.jpg".into(),
//!     vector: vec![0.25; 512],
//!     meta: VectorMetadata::default(),
//! };
//! if let Err(e) = writer.write(vec![record]).await {
//!     eprintln!("not stored: {:?}", e.unwritten);
//!     return Err(e.into());
//! }
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::Semaphore;

use crate::vector::{attr, VectorRecord};
use embatch_aws::retry::{is_throttling, is_transient_sdk_error, RetryPolicy};
use embatch_aws::sdk_error::describe;

/// DynamoDB's limit on the requests in one `BatchWriteItem`.
pub const MAX_BATCH_WRITE_ITEMS: usize = 25;

/// How a [`TableWriter`] sends its requests.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// `BatchWriteItem` requests in flight at once, shared by all clones of a writer.
    pub max_in_flight: usize,
    /// Backoff and budget for unprocessed items and throttling, per batch of ≤ 25.
    pub retry: RetryPolicy,
    /// The longest the [`Pacer`] spaces two request starts while the table throttles.
    pub max_pace: Duration,
}

impl Default for WriterConfig {
    /// 8 requests in flight (200 items), the default [`RetryPolicy`], pacing up to
    /// [`Pacer::DEFAULT_MAX_INTERVAL`].
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            retry: RetryPolicy::default(),
            max_pace: Pacer::DEFAULT_MAX_INTERVAL,
        }
    }
}

/// Writes vector records to one table. Cheap to clone; clones share the in-flight limit.
#[derive(Clone, Debug)]
pub struct TableWriter {
    client: aws_sdk_dynamodb::Client,
    table: Arc<str>,
    retry: RetryPolicy,
    in_flight: Arc<Semaphore>,
    pacer: Arc<Pacer>,
}

/// Spaces the starts of requests while the table throttles (see the module docs).
#[derive(Debug)]
pub struct Pacer {
    state: std::sync::Mutex<Pace>,
    max: Duration,
}

#[derive(Debug)]
struct Pace {
    interval: Duration,
    next: tokio::time::Instant,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            interval: Duration::ZERO,
            next: tokio::time::Instant::now(),
        }
    }
}

impl Pacer {
    /// The default longest interval between two request starts: a request (25 items) every
    /// 2 s per writer, 12.5 items/s (deploy/README.md, "DynamoDB write capacity").
    pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(2);

    /// A pacer that is not pacing, and paces at most `max` apart.
    pub fn new(max: Duration) -> Self {
        Self {
            state: Default::default(),
            max,
        }
    }

    /// Waits for this request's turn.
    pub async fn turn(&self) {
        let at = {
            let mut pace = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if pace.interval.is_zero() {
                return;
            }
            let at = pace.next.max(tokio::time::Instant::now());
            pace.next = at + pace.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// The table throttled: slow down.
    pub fn throttled(&self) {
        let mut pace = self.state.lock().unwrap_or_else(|p| p.into_inner());
        pace.interval = (pace.interval * 2 + Duration::from_millis(1)).min(self.max);
    }

    /// A request went through whole: speed up.
    pub fn succeeded(&self) {
        let mut pace = self.state.lock().unwrap_or_else(|p| p.into_inner());
        pace.interval = pace.interval.mul_f64(0.9);
        if pace.interval < Duration::from_micros(100) {
            pace.interval = Duration::ZERO;
        }
    }

    /// The current interval between request starts.
    pub fn interval(&self) -> Duration {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .interval
    }
}

/// Why a batch of items was not written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteFailure {
    /// DynamoDB kept throttling or leaving items unprocessed until the retry budget was
    /// spent. Retrying later (e.g. the whole Batch child) may succeed.
    #[error("still not written after {attempts} attempts (last: {last})")]
    RetriesExhausted {
        /// Attempts made for the batch.
        attempts: u32,
        /// The last thing that went wrong.
        last: String,
    },
    /// A transient failure (5xx, timeout, connection) the SDK's own retries did not fix.
    /// Retrying later may succeed.
    #[error("failed after the SDK's retries: {message}")]
    Transient {
        /// The error, with its causes.
        message: String,
    },
    /// DynamoDB rejected the request outright (validation, access denied, missing table).
    #[error("rejected: {message}")]
    Rejected {
        /// The service's error.
        message: String,
    },
}

/// Some vectors were not written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} vector(s) not written to DynamoDB table {table}: {cause}; unwritten ImageIds: {}",
    unwritten.len(),
    preview(unwritten)
)]
pub struct WriteError {
    /// The table.
    pub table: String,
    /// Every `ImageId` that is not stored (the rest of the call's records are).
    pub unwritten: Vec<String>,
    /// Why the first failing batch failed.
    pub cause: WriteFailure,
    /// Whether every failing batch failed only transiently (worth retrying later).
    pub transient: bool,
}

/// The first few ids of a list, for error messages.
pub(crate) fn preview(ids: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .map(|id| format!("{id:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

struct BatchError {
    ids: Vec<String>,
    failure: WriteFailure,
}

impl TableWriter {
    /// A writer for `table`.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        config: WriterConfig,
    ) -> Self {
        Self {
            client,
            table: Arc::from(table.into()),
            retry: config.retry,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            pacer: Arc::new(Pacer::new(config.max_pace)),
        }
    }

    /// The pacer shared by this writer's clones.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// The table written to.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Stores `records`: ≤ 25 per `BatchWriteItem`, several requests in flight, unprocessed
    /// and throttled items retried. If one `ImageId` appears more than once, the last record
    /// wins (as if each had been put in turn; DynamoDB rejects duplicate keys in a batch).
    ///
    /// On error, every record not named in [`WriteError::unwritten`] is stored. A batch that
    /// DynamoDB rejects as invalid (e.g. an item over 400 KB) is split until the invalid
    /// items stand alone, so one bad record does not cost its 24 neighbours.
    pub async fn write(&self, records: Vec<VectorRecord>) -> Result<(), WriteError> {
        let requests = last_per_id(records)
            .into_iter()
            .map(|record| {
                let put = PutRequest::builder()
                    .set_item(Some(record.to_item()))
                    .build()
                    .map_err(|e| BatchError {
                        ids: vec![record.image_id.clone()],
                        failure: WriteFailure::Rejected {
                            message: e.to_string(),
                        },
                    })?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<Vec<_>, BatchError>>()
            .map_err(|e| self.error(vec![e]))?;

        let batches: Vec<Vec<WriteRequest>> = requests
            .chunks(MAX_BATCH_WRITE_ITEMS)
            .map(<[WriteRequest]>::to_vec)
            .collect();
        let concurrency = batches.len().max(1);
        let failures: Vec<BatchError> = stream::iter(batches)
            .map(|batch| self.write_batch(batch))
            // The semaphore bounds requests on the wire; this only bounds tasks waiting on it.
            .buffer_unordered(concurrency)
            .concat()
            .await;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(self.error(failures))
        }
    }

    /// Writes one batch of ≤ 25; returns what failed (nothing on success).
    fn write_batch(&self, pending: Vec<WriteRequest>) -> BoxFuture<'_, Vec<BatchError>> {
        Box::pin(self.write_batch_inner(pending))
    }

    async fn write_batch_inner(&self, mut pending: Vec<WriteRequest>) -> Vec<BatchError> {
        debug_assert!(pending.len() <= MAX_BATCH_WRITE_ITEMS);
        let mut backoff = self.retry.backoff();
        loop {
            let last = match self.send(&pending).await {
                Ok(output) => {
                    let unprocessed = output
                        .unprocessed_items
                        .and_then(|mut tables| tables.remove(&*self.table))
                        .unwrap_or_default();
                    if unprocessed.is_empty() {
                        self.pacer.succeeded();
                        return Vec::new();
                    }
                    self.pacer.throttled();
                    tracing::debug!(
                        table = &*self.table,
                        unprocessed = unprocessed.len(),
                        "BatchWriteItem left items unprocessed"
                    );
                    let last = format!(
                        "{} of {} items unprocessed",
                        unprocessed.len(),
                        pending.len()
                    );
                    pending = unprocessed;
                    last
                }
                Err(e) if is_throttling(&e) => {
                    // Throttling outlasted the SDK's attempts (or its retry quota ran dry).
                    self.pacer.throttled();
                    tracing::debug!(table = &*self.table, error = %describe(&e), "BatchWriteItem throttled");
                    describe(&e)
                }
                Err(e) if is_transient_sdk_error(&e) => {
                    // The SDK already retried this: fail the batch (the child is retried later).
                    return failed(
                        &pending,
                        WriteFailure::Transient {
                            message: describe(&e),
                        },
                    );
                }
                Err(e) if e.code() == Some("ValidationException") && pending.len() > 1 => {
                    // One bad item (e.g. over DynamoDB's 400 KB) fails its whole batch: split
                    // the batch until the bad items stand alone, so the good ones are stored.
                    tracing::debug!(table = &*self.table, error = %describe(&e), "BatchWriteItem rejected; splitting the batch");
                    let right = pending.split_off(pending.len() / 2);
                    let (mut left, right) =
                        futures::join!(self.write_batch(pending), self.write_batch(right));
                    left.extend(right);
                    return left;
                }
                Err(e) => {
                    return failed(
                        &pending,
                        WriteFailure::Rejected {
                            message: describe(&e),
                        },
                    )
                }
            };
            if !backoff.wait().await {
                let attempts = backoff.attempts();
                return failed(&pending, WriteFailure::RetriesExhausted { attempts, last });
            }
        }
    }

    /// One BatchWriteItem of `pending`, within the in-flight limit and the pacer's turn.
    async fn send(
        &self,
        pending: &[WriteRequest],
    ) -> Result<
        aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemOutput,
        aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError,
        >,
    > {
        let _permit = self.in_flight.acquire().await;
        self.pacer.turn().await;
        self.client
            .batch_write_item()
            .request_items(self.table.to_string(), pending.to_vec())
            .send()
            .await
    }

    fn error(&self, failures: Vec<BatchError>) -> WriteError {
        let transient = failures.iter().all(|f| {
            matches!(
                f.failure,
                WriteFailure::RetriesExhausted { .. } | WriteFailure::Transient { .. }
            )
        });
        let mut failures = failures.into_iter();
        let first = failures
            .next()
            .expect("error() is called with at least one failure");
        let mut unwritten = first.ids;
        unwritten.extend(failures.flat_map(|f| f.ids));
        WriteError {
            table: self.table.to_string(),
            unwritten,
            cause: first.failure,
            transient,
        }
    }
}

/// Keeps the last record of each `ImageId`, in the order of those last occurrences.
fn last_per_id(records: Vec<VectorRecord>) -> Vec<VectorRecord> {
    let mut seen = HashSet::with_capacity(records.len());
    let mut kept: Vec<VectorRecord> = records
        .into_iter()
        .rev()
        .filter(|r| seen.insert(r.image_id.clone()))
        .collect();
    kept.reverse();
    kept
}

/// The whole batch as one failure.
fn failed(pending: &[WriteRequest], failure: WriteFailure) -> Vec<BatchError> {
    vec![BatchError {
        ids: ids_of(pending),
        failure,
    }]
}

fn ids_of(requests: &[WriteRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.put_request()
                .map(|p| p.item())
                .and_then(|item: &HashMap<String, AttributeValue>| item.get(attr::IMAGE_ID))
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::VectorMetadata;

    fn record(id: &str, v: f32) -> VectorRecord {
        VectorRecord {
            image_id: id.into(),
            vector: vec![v],
            meta: VectorMetadata::default(),
        }
    }

    #[test]
    fn the_pacer_backs_off_on_throttling_and_recovers_on_success() {
        let pacer = Pacer::new(Duration::from_secs(1));
        assert_eq!(
            pacer.interval(),
            Duration::ZERO,
            "no pacing until throttled"
        );
        pacer.throttled();
        pacer.throttled();
        assert_eq!(pacer.interval(), Duration::from_millis(3));
        for _ in 0..20 {
            pacer.throttled();
        }
        assert_eq!(pacer.interval(), Duration::from_secs(1));
        pacer.succeeded();
        assert_eq!(pacer.interval(), Duration::from_millis(900));
        for _ in 0..200 {
            pacer.succeeded();
        }
        assert_eq!(pacer.interval(), Duration::ZERO, "back to full speed");
    }

    #[test]
    fn the_last_record_of_an_id_wins() {
        let kept = last_per_id(vec![record("a", 1.0), record("b", 2.0), record("a", 3.0)]);
        let got: Vec<_> = kept
            .iter()
            .map(|r| (r.image_id.as_str(), r.vector[0]))
            .collect();
        assert_eq!(got, vec![("b", 2.0), ("a", 3.0)]);
    }

    #[test]
    fn errors_name_the_first_ids_and_count_the_rest() {
        let ids: Vec<String> = (0..12).map(|i| format!("img{i}")).collect();
        let e = WriteError {
            table: "t".into(),
            unwritten: ids,
            cause: WriteFailure::Rejected {
                message: "no".into(),
            },
            transient: false,
        };
        let text = e.to_string();
        assert!(
            text.starts_with("12 vector(s) not written to DynamoDB table t"),
            "{text}"
        );
        assert!(text.contains("\"img9\" and 2 more"), "{text}");
        assert!(!text.contains("img10"), "{text}");
    }
}
