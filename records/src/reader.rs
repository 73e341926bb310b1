//! Reading vectors back: by id ([`TableReader::get`]), the provenance the worker needs to
//! resume ([`TableReader::provenance`]), the models a sample of the table holds
//! ([`TableReader::sample_models`]), and the whole table as a stream ([`TableReader::scan`]).
//!
//! `get` and `provenance` use `BatchGetItem` in chunks of ≤ [`MAX_BATCH_GET_KEYS`] keys with
//! several requests in flight. The SDK retries 5xx answers, timeouts and broken connections;
//! `UnprocessedKeys` and throttling that outlasts the SDK are retried with the shared
//! [`RetryPolicy`] (see [`embatch_aws::retry`]). A stored item that is not a valid vector is an
//! [`ItemError`] naming it, never a panic or a wrong vector.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use embatch_records::client::{self, AwsOptions};
//! use embatch_records::reader::TableReader;
//! use embatch_records::vector::{VectorMetadata, VectorRecord};
//! use embatch_records::writer::{TableWriter, WriterConfig};
//! use futures::TryStreamExt;
//!
//! let cat = VectorRecord {
//!     image_id: "images/cat.jpg".into(),
//!     vector: vec![0.25; 512],
//!     meta: VectorMetadata { source_uri: Some("s3://photos/images/cat.jpg".into()), ..Default::default() },
//! };
//! let dynamodb = client::dynamodb(&client::load(&AwsOptions::default()).await);
//! TableWriter::new(dynamodb.clone(), "embatch-vectors", WriterConfig::default())
//!     .write(vec![cat])
//!     .await?;
//!
//! let reader = TableReader::new(dynamodb, "embatch-vectors");
//! let fetched = reader.get(&["images/cat.jpg", "images/dog.jpg"]).await?;
//! let v: &[f32] = fetched.vector("images/cat.jpg").expect("stored above");
//! assert_eq!(v.len(), 512);
//! assert_eq!(fetched.found[0].meta.source_uri.as_deref(), Some("s3://photos/images/cat.jpg"));
//! assert_eq!(fetched.missing, vec!["images/dog.jpg"]);
//!
//! // The whole table, 4 parallel scan segments.
//! let all: Vec<VectorRecord> = reader.scan(4).try_collect().await?;
//! assert_eq!(all.len(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Select};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::Semaphore;

use crate::vector::{attr, ItemError, VectorRecord};
use crate::writer::preview;
use embatch_aws::retry::{is_throttling, is_transient_sdk_error, retry, RetryPolicy};
use embatch_aws::sdk_error::describe;

/// DynamoDB's limit on the keys in one `BatchGetItem`.
pub const MAX_BATCH_GET_KEYS: usize = 100;

/// How a [`TableReader`] sends its requests.
#[derive(Clone, Copy, Debug)]
pub struct ReaderConfig {
    /// Requests in flight at once (`BatchGetItem` chunks for `get`/`provenance`).
    pub max_in_flight: usize,
    /// Backoff and budget for unprocessed keys and throttling, per request.
    pub retry: RetryPolicy,
    /// Strongly consistent reads (twice the read cost; sees writes that just finished).
    pub consistent_read: bool,
}

impl Default for ReaderConfig {
    /// 8 requests in flight, the default [`RetryPolicy`], eventually consistent reads.
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            retry: RetryPolicy::default(),
            consistent_read: false,
        }
    }
}

/// Reads vector records from one table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TableReader {
    client: aws_sdk_dynamodb::Client,
    table: Arc<str>,
    config: ReaderConfig,
    in_flight: Arc<Semaphore>,
}

/// The answer to [`TableReader::get`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lookup {
    /// The stored records, in the order their ids were asked for.
    pub found: Vec<VectorRecord>,
    /// The ids with no item, in the order they were asked for.
    pub missing: Vec<String>,
}

impl Lookup {
    /// The record of `id`, if it was found.
    pub fn record(&self, id: &str) -> Option<&VectorRecord> {
        self.found.iter().find(|r| r.image_id == id)
    }

    /// The vector of `id` as a borrowed slice, if it was found.
    pub fn vector(&self, id: &str) -> Option<&[f32]> {
        self.record(id).map(|r| r.vector.as_slice())
    }

    /// The found records keyed by id.
    pub fn into_map(self) -> HashMap<String, VectorRecord> {
        self.found
            .into_iter()
            .map(|r| (r.image_id.clone(), r))
            .collect()
    }
}

/// What a stored vector was computed from: enough to tell whether it is still current.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// `SourceEtag` (absent on items written by the original sample).
    pub source_etag: Option<String>,
    /// `ModelSha256` (absent on items written by the original sample).
    pub model_sha256: Option<String>,
}

/// The model a stored vector was computed with, as its item records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredModel {
    /// `ModelSha256`: the model file's sha256.
    pub sha256: String,
    /// `Model`: the model spec's name.
    pub name: Option<String>,
    /// `Dimension`: the vector's length.
    pub dimension: Option<usize>,
}

/// Reading failed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ReadError {
    /// A request failed permanently, or transiently until the retry budget was spent.
    #[error("{operation} on DynamoDB table {table} failed: {message}")]
    Request {
        /// The table.
        table: String,
        /// `BatchGetItem` or `Scan`.
        operation: &'static str,
        /// The error, with its causes.
        message: String,
        /// Whether it was a transient failure (throttling, 5xx, connection) that outlasted
        /// the retry budget, so retrying later may succeed.
        transient: bool,
    },
    /// DynamoDB kept returning keys as unprocessed until the retry budget was spent.
    #[error("DynamoDB table {table}: {} key(s) still unprocessed after {attempts} attempts: {}", ids.len(), preview(ids))]
    Unprocessed {
        /// The table.
        table: String,
        /// The ids not read.
        ids: Vec<String>,
        /// Attempts made.
        attempts: u32,
    },
    /// A stored item is not a valid vector record.
    #[error(transparent)]
    Item(#[from] ItemError),
}

impl ReadError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReadError::Request { transient, .. } => *transient,
            ReadError::Unprocessed { .. } => true,
            ReadError::Item(_) => false,
        }
    }
}

type Item = HashMap<String, AttributeValue>;

impl TableReader {
    /// A reader for `table` with the default [`ReaderConfig`].
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self::with_config(client, table, ReaderConfig::default())
    }

    /// A reader for `table`.
    pub fn with_config(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        config: ReaderConfig,
    ) -> Self {
        Self {
            client,
            table: Arc::from(table.into()),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config,
        }
    }

    /// The table read from.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The records of `ids` (duplicates are read once) and the ids that have none.
    pub async fn get<S: AsRef<str>>(&self, ids: &[S]) -> Result<Lookup, ReadError> {
        let ids = unique(ids);
        let mut items = self.batch_get(&ids, None).await?;
        let mut fetched = Lookup::default();
        for id in ids {
            match items.remove(&id) {
                Some(item) => fetched.found.push(VectorRecord::from_item(&item)?),
                None => fetched.missing.push(id),
            }
        }
        Ok(fetched)
    }

    /// For each id already stored, its `SourceEtag` and `ModelSha256` (read with a
    /// projection: the vectors are not transferred). Ids with no item are absent.
    pub async fn provenance<S: AsRef<str>>(
        &self,
        ids: &[S],
    ) -> Result<HashMap<String, Provenance>, ReadError> {
        let ids = unique(ids);
        let items = self
            .batch_get(
                &ids,
                Some([attr::IMAGE_ID, attr::SOURCE_ETAG, attr::MODEL_SHA256]),
            )
            .await?;
        items
            .into_iter()
            .map(|(id, item)| {
                let string = |name: &'static str| match item.get(name) {
                    None => Ok(None),
                    Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(ItemError::WrongType {
                        image_id: id.clone(),
                        name,
                        expected: "a string (S)",
                    }),
                };
                let provenance = Provenance {
                    source_etag: string(attr::SOURCE_ETAG)?,
                    model_sha256: string(attr::MODEL_SHA256)?,
                };
                Ok((id, provenance))
            })
            .collect()
    }

    /// The distinct models of up to `limit` stored vectors: one `Scan` page of that many items
    /// (wherever the table's hash order starts, so about a random sample of its ImageIds),
    /// reading only their model attributes. Items without `ModelSha256` (the original
    /// sample's) are left out.
    pub async fn sample_models(&self, limit: i32) -> Result<Vec<StoredModel>, ReadError> {
        let names = [attr::MODEL_SHA256, attr::MODEL, attr::DIMENSION];
        let page = retry(&self.config.retry, is_throttling, || {
            let mut request = self
                .client
                .scan()
                .table_name(&*self.table)
                .limit(limit)
                // Explicit, for the submitter's policy, which allows only this projection.
                .select(Select::SpecificAttributes)
                .projection_expression("#a0, #a1, #a2");
            for (i, name) in names.iter().enumerate() {
                request = request.expression_attribute_names(format!("#a{i}"), *name);
            }
            request.send()
        })
        .await
        .map_err(|e| self.request_error("Scan", &e))?;
        let mut models: Vec<StoredModel> = Vec::new();
        for item in page.items() {
            let text = |name| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let Some(sha256) = text(attr::MODEL_SHA256) else {
                continue;
            };
            let model = StoredModel {
                sha256,
                name: text(attr::MODEL),
                dimension: item
                    .get(attr::DIMENSION)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok()),
            };
            if !models.contains(&model) {
                models.push(model);
            }
        }
        Ok(models)
    }

    /// Every record in the table, read by `segments` parallel Scan segments (at least 1).
    /// The order is unspecified. A corrupt item is an `Err` in the stream, which goes on; a
    /// request failure that outlasts the retry budget is an `Err` that ends its segment.
    pub fn scan(
        &self,
        segments: u32,
    ) -> impl Stream<Item = Result<VectorRecord, ReadError>> + Send + 'static {
        let segments = segments.max(1);
        stream::select_all(
            (0..segments).map(|segment| Box::pin(self.clone().scan_segment(segment, segments))),
        )
    }

    fn scan_segment(
        self,
        segment: u32,
        total: u32,
    ) -> impl Stream<Item = Result<VectorRecord, ReadError>> + Send + 'static {
        enum Next {
            Page(Option<Item>),
            Done,
        }
        stream::unfold(Next::Page(None), move |next| {
            let reader = self.clone();
            async move {
                let Next::Page(start) = next else {
                    return None;
                };
                let result = retry(&reader.config.retry, is_throttling, || {
                    let mut request = reader
                        .client
                        .scan()
                        .table_name(&*reader.table)
                        .consistent_read(reader.config.consistent_read)
                        .set_exclusive_start_key(start.clone());
                    if total > 1 {
                        request = request.segment(segment as i32).total_segments(total as i32);
                    }
                    request.send()
                })
                .await;
                match result {
                    Ok(page) => {
                        let next = match page.last_evaluated_key {
                            Some(key) if !key.is_empty() => Next::Page(Some(key)),
                            _ => Next::Done,
                        };
                        let records: Vec<_> = page
                            .items
                            .unwrap_or_default()
                            .iter()
                            .map(|item| VectorRecord::from_item(item).map_err(ReadError::from))
                            .collect();
                        Some((records, next))
                    }
                    Err(e) => Some((vec![Err(reader.request_error("Scan", &e))], Next::Done)),
                }
            }
        })
        .flat_map(stream::iter)
    }

    /// `BatchGetItem` of `ids` (unique), chunked and in parallel; the items found, by id.
    async fn batch_get(
        &self,
        ids: &[String],
        projection: Option<[&'static str; 3]>,
    ) -> Result<HashMap<String, Item>, ReadError> {
        // Owned chunks: a future borrowing them from `ids` is not `Send` (rustc cannot prove
        // the borrow general enough across `buffer_unordered`), and callers spawn these.
        let chunks: Vec<Vec<String>> = ids
            .chunks(MAX_BATCH_GET_KEYS)
            .map(<[String]>::to_vec)
            .collect();
        let concurrency = chunks.len().max(1);
        let pages: Vec<Result<Vec<Item>, ReadError>> = stream::iter(chunks)
            .map(|chunk| self.batch_get_chunk(chunk, projection))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut found = HashMap::with_capacity(ids.len());
        for page in pages {
            for item in page? {
                let id = match item.get(attr::IMAGE_ID) {
                    Some(AttributeValue::S(id)) => id.clone(),
                    _ => {
                        return Err(ItemError::Missing {
                            image_id: String::new(),
                            name: attr::IMAGE_ID,
                        }
                        .into())
                    }
                };
                found.insert(id, item);
            }
        }
        Ok(found)
    }

    async fn batch_get_chunk(
        &self,
        ids: Vec<String>,
        projection: Option<[&'static str; 3]>,
    ) -> Result<Vec<Item>, ReadError> {
        let keys: Vec<Item> = ids
            .into_iter()
            .map(|id| HashMap::from([(attr::IMAGE_ID.to_string(), AttributeValue::S(id))]))
            .collect();
        let mut pending = self.keys_and_attributes(keys, projection);
        let mut found = Vec::with_capacity(pending.keys().len());
        let mut backoff = self.config.retry.backoff();
        loop {
            let result = {
                let _permit = self.in_flight.acquire().await;
                self.client
                    .batch_get_item()
                    .request_items(self.table.to_string(), pending.clone())
                    .send()
                    .await
            };
            // What to report if the budget runs out now.
            let exhausted = match result {
                Ok(output) => {
                    found.extend(
                        output
                            .responses
                            .and_then(|mut tables| tables.remove(&*self.table))
                            .unwrap_or_default(),
                    );
                    match output
                        .unprocessed_keys
                        .and_then(|mut tables| tables.remove(&*self.table))
                        .filter(|k| !k.keys().is_empty())
                    {
                        None => return Ok(found),
                        Some(unprocessed) => pending = unprocessed,
                    }
                    None
                }
                Err(e) if is_throttling(&e) => {
                    tracing::debug!(table = &*self.table, error = %describe(&e), "BatchGetItem throttled");
                    Some(self.request_error("BatchGetItem", &e))
                }
                Err(e) => return Err(self.request_error("BatchGetItem", &e)),
            };
            if !backoff.wait().await {
                return Err(exhausted.unwrap_or_else(|| ReadError::Unprocessed {
                    table: self.table.to_string(),
                    ids: pending
                        .keys()
                        .iter()
                        .filter_map(|k| k.get(attr::IMAGE_ID)?.as_s().ok().cloned())
                        .collect(),
                    attempts: backoff.attempts(),
                }));
            }
        }
    }

    fn keys_and_attributes(
        &self,
        keys: Vec<Item>,
        projection: Option<[&'static str; 3]>,
    ) -> KeysAndAttributes {
        let mut builder = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(self.config.consistent_read);
        if let Some(names) = projection {
            let placeholders: Vec<String> = (0..names.len()).map(|i| format!("#a{i}")).collect();
            builder = builder.projection_expression(placeholders.join(", "));
            for (placeholder, name) in placeholders.into_iter().zip(names) {
                builder = builder.expression_attribute_names(placeholder, name);
            }
        }
        builder
            .build()
            .expect("KeysAndAttributes has its only required field, keys, set")
    }

    fn request_error<E>(
        &self,
        operation: &'static str,
        e: &aws_sdk_dynamodb::error::SdkError<E>,
    ) -> ReadError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        ReadError::Request {
            table: self.table.to_string(),
            operation,
            message: describe(e),
            transient: is_transient_sdk_error(e),
        }
    }
}

/// The ids in order, each once.
fn unique<S: AsRef<str>>(ids: &[S]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter()
        .map(AsRef::as_ref)
        .filter(|id| seen.insert(*id))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    /// Callers spawn these futures on a multi-threaded runtime: they must stay `Send` (this
    /// fails to compile otherwise).
    #[allow(dead_code)]
    fn futures_are_send(reader: &super::TableReader, ids: &[String]) {
        fn send<T: Send>(_: T) {}
        send(reader.get(ids));
        send(reader.provenance(ids));
    }
}
