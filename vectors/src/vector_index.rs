//! `embatch-vectors index`: the vectors loaded into an Amazon S3 Vectors index, at the
//! index's pace.
//!
//! An index takes 2,500 vectors/s and 1,000 write requests/s, 500 vectors per PutVectors and
//! 100 keys per GetVectors (the S3 Vectors limits, "Limitations and restrictions"); a fleet
//! computes faster than that, so the index is loaded after (or beside) a run, not by the
//! workers. Records flow in chunks of 100: one GetVectors (metadata only) says which are
//! already there from the same model and the same source object (`ModelSha256` and
//! `SourceEtag`, kept as non-filterable metadata), the others go out in PutVectors of 500,
//! paced to `--rate` vectors/s, a few requests in flight, throttling retried with backoff. A
//! re-run therefore writes only what is missing or changed. Vectors the service refuses by
//! rule (NaN or infinite values, all zeros under cosine) are skipped and reported by ImageId.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3vectors::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3vectors::operation::get_index::GetIndexError;
use aws_sdk_s3vectors::types::{
    DataType, DistanceMetric, GetOutputVector, MetadataConfiguration, PutInputVector, VectorData,
};
use aws_smithy_types::Document;
use embatch_aws::retry::{is_throttling, retry, RetryPolicy};
use embatch_aws::sdk_error::describe;
use embatch_records::vector::{attr, VectorRecord};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::time::Instant;

/// Vectors per PutVectors (the service's maximum).
pub const PUT_BATCH: usize = 500;
/// Keys per GetVectors (the service's maximum).
pub const GET_BATCH: usize = 100;
/// The default pace: 80% of an index's 2,500 vectors/s.
pub const DEFAULT_RATE: u32 = 2_000;
/// Requests in flight, per stage.
const IN_FLIGHT: usize = 4;
/// Metadata kept to decide what a re-run must write, not to filter on.
const NON_FILTERABLE: [&str; 2] = [attr::MODEL_SHA256, attr::SOURCE_ETAG];

/// `target.client.<operation>()` addressed to the target's bucket and index.
macro_rules! on_index {
    ($target:expr, $operation:ident) => {
        $target
            .client
            .$operation()
            .vector_bucket_name(&$target.bucket)
            .index_name(&$target.index)
    };
}

/// The index to load.
pub struct Target {
    /// The S3 Vectors client.
    pub client: aws_sdk_s3vectors::Client,
    /// The vector bucket.
    pub bucket: String,
    /// The index in it.
    pub index: String,
}

impl Target {
    /// `op` with throttling retried (the SDK's attempts, then ours with backoff); an error
    /// names the operation and the index.
    async fn throttled<T, E, F, Fut>(&self, operation: &str, op: F) -> anyhow::Result<T>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
    {
        retry(&RetryPolicy::default(), is_throttling, op)
            .await
            .map_err(|e| anyhow::anyhow!("{operation} on index {}: {}", self.index, describe(&e)))
    }
}

/// How to load it.
pub struct LoadOptions {
    /// Create the index (dimension from the first vector, cosine, float32) if it is missing.
    pub create: bool,
    /// Vectors per second, at most.
    pub rate: u32,
}

/// What a load did.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Records read from the source.
    pub read: u64,
    /// Vectors written (missing from the index, or changed).
    pub written: u64,
    /// Vectors already in the index from the same model and source object.
    pub unchanged: u64,
    /// Records the service would refuse, with why (ImageId, reason).
    pub skipped: Vec<(String, String)>,
}

/// Loads every record of `source` into `target`.
pub async fn load(
    source: impl Stream<Item = anyhow::Result<VectorRecord>>,
    target: &Target,
    options: &LoadOptions,
) -> anyhow::Result<Loaded> {
    let mut source = std::pin::pin!(source.peekable());
    let first = match source.as_mut().peek().await {
        Some(Ok(record)) => Some(record.vector.len()),
        Some(Err(_)) => None, // reported when the stream reaches it
        None => return Ok(Loaded::default()),
    };
    if let Some(dimension) = first {
        ensure_index(target, dimension, options.create).await?;
    }
    let tally = Mutex::new(Loaded::default());
    let pacer = Pacer::new(options.rate);
    source
        .try_chunks(GET_BATCH)
        .map_err(|e| e.1)
        .map_ok(|chunk| to_write(target, chunk, &tally))
        .try_buffered(IN_FLIGHT)
        .map_ok(|vectors| futures::stream::iter(vectors.into_iter().map(Ok)))
        .try_flatten()
        .try_chunks(PUT_BATCH)
        .map_err(|e| e.1)
        .map_ok(|batch| put(target, batch, &pacer, &tally))
        .try_buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    Ok(tally.into_inner().expect("no panic while counting"))
}

/// The index exists with `dimension`, created if missing and `create`.
async fn ensure_index(target: &Target, dimension: usize, create: bool) -> anyhow::Result<()> {
    let name = format!("index {} in vector bucket {}", target.index, target.bucket);
    let found = on_index!(target, get_index).send().await;
    match found {
        Ok(out) => {
            let has = out.index().map(|i| i.dimension());
            anyhow::ensure!(
                has == Some(dimension as i32),
                "{name} holds {}-d vectors, these are {dimension}-d: one index per model",
                has.unwrap_or(0)
            );
            Ok(())
        }
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(GetIndexError::NotFoundException(_))
            ) =>
        {
            anyhow::ensure!(create, "{name} does not exist: pass --create to create it");
            create_index(target, dimension).await.context(name)
        }
        Err(e) => Err(anyhow::anyhow!("reading {name}: {}", describe(&e))),
    }
}

async fn create_index(target: &Target, dimension: usize) -> anyhow::Result<()> {
    let metadata = MetadataConfiguration::builder()
        .set_non_filterable_metadata_keys(Some(NON_FILTERABLE.map(String::from).to_vec()))
        .build()?;
    on_index!(target, create_index)
        .data_type(DataType::Float32)
        .dimension(i32::try_from(dimension)?)
        .distance_metric(DistanceMetric::Cosine)
        .metadata_configuration(metadata)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating it: {}", describe(&e)))?;
    eprintln!("created index {} ({dimension}-d, cosine)", target.index);
    Ok(())
}

/// The records of one chunk that must be written, as PutVectors entries; the others counted.
async fn to_write(
    target: &Target,
    chunk: Vec<VectorRecord>,
    tally: &Mutex<Loaded>,
) -> anyhow::Result<Vec<PutInputVector>> {
    let keys: Vec<String> = chunk.iter().map(|r| r.image_id.clone()).collect();
    let stored = target
        .throttled("GetVectors", || {
            on_index!(target, get_vectors)
                .set_keys(Some(keys.clone()))
                .return_data(false)
                .return_metadata(true)
                .send()
        })
        .await?;
    let stored: HashMap<&str, &GetOutputVector> =
        stored.vectors().iter().map(|v| (v.key(), v)).collect();
    let mut tally = tally.lock().expect("no panic while counting");
    let mut out = Vec::with_capacity(chunk.len());
    for record in chunk {
        tally.read += 1;
        if let Some(why) = refused(&record.vector) {
            tally.skipped.push((record.image_id, why.to_string()));
        } else if stored
            .get(record.image_id.as_str())
            .is_some_and(|v| is_current(v.metadata(), &record))
        {
            tally.unchanged += 1;
        } else {
            out.push(entry(record)?);
        }
    }
    Ok(out)
}

/// Why S3 Vectors would refuse this vector in a cosine index, if it would.
fn refused(vector: &[f32]) -> Option<&'static str> {
    if vector.iter().any(|v| !v.is_finite()) {
        Some("the vector holds NaN or infinite values, which S3 Vectors refuses")
    } else if vector.iter().all(|v| *v == 0.0) {
        Some("the vector is all zeros, which a cosine index refuses")
    } else {
        None
    }
}

/// The stored vector came from the same model and the same source object.
fn is_current(stored: Option<&Document>, record: &VectorRecord) -> bool {
    let Some(Document::Object(stored)) = stored else {
        return false;
    };
    let same = |name: &str, ours: &Option<String>| {
        let theirs = match stored.get(name) {
            Some(Document::String(s)) => Some(s.as_str()),
            _ => None,
        };
        theirs == ours.as_deref()
    };
    same(attr::MODEL_SHA256, &record.meta.model_sha256)
        && same(attr::SOURCE_ETAG, &record.meta.source_etag)
}

/// The PutVectors entry of a record: key = ImageId; metadata SourceUri and Model (filterable),
/// ModelSha256 and SourceEtag (not).
fn entry(record: VectorRecord) -> anyhow::Result<PutInputVector> {
    let m = &record.meta;
    let metadata: HashMap<String, Document> = [
        (attr::SOURCE_URI, &m.source_uri),
        (attr::MODEL, &m.model),
        (attr::MODEL_SHA256, &m.model_sha256),
        (attr::SOURCE_ETAG, &m.source_etag),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), Document::String(v.clone()?))))
    .collect();
    Ok(PutInputVector::builder()
        .key(record.image_id)
        .data(VectorData::Float32(record.vector))
        .metadata(Document::Object(metadata))
        .build()?)
}

/// One PutVectors, paced, throttling retried.
async fn put(
    target: &Target,
    batch: Vec<PutInputVector>,
    pacer: &Pacer,
    tally: &Mutex<Loaded>,
) -> anyhow::Result<()> {
    pacer.take(batch.len()).await;
    target
        .throttled("PutVectors", || {
            on_index!(target, put_vectors)
                .set_vectors(Some(batch.clone()))
                .send()
        })
        .await?;
    tally.lock().expect("no panic while counting").written += batch.len() as u64;
    Ok(())
}

/// Spaces the writes so that they average at most `rate` vectors a second.
struct Pacer {
    per_vector: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Self {
            per_vector: Duration::from_secs(1) / rate.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the turn of `n` vectors.
    async fn take(&self, n: usize) {
        tokio::time::sleep_until(self.reserve(n, Instant::now())).await;
    }

    /// When `n` vectors asked for at `now` may go: when the ones before them are spaced out.
    fn reserve(&self, n: usize, now: Instant) -> Instant {
        let mut next = self.next.lock().expect("no panic while pacing");
        let start = (*next).max(now);
        *next = start + self.per_vector * n as u32;
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_the_service_refuses_are_named() {
        assert!(refused(&[0.5, -1.0]).is_none());
        assert!(refused(&[0.5, f32::NAN]).unwrap().contains("NaN"));
        assert!(refused(&[f32::INFINITY, 1.0]).unwrap().contains("infinite"));
        assert!(refused(&[0.0, 0.0]).unwrap().contains("all zeros"));
    }

    #[test]
    fn the_pacer_spaces_batches_to_the_rate() {
        let t0 = Instant::now();
        let pacer = Pacer::new(1_000);
        *pacer.next.lock().unwrap() = t0;
        let ms = |t: Instant| t.duration_since(t0).as_millis();
        // Asked for at once, batches of 500 go at 0, 0.5, 1.0 and 1.5 s.
        let starts: Vec<u128> = (0..4).map(|_| ms(pacer.reserve(500, t0))).collect();
        assert_eq!(starts, [0, 500, 1000, 1500]);
        // After a pause the pace does not bank the idle time: the next batch goes at once.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(ms(pacer.reserve(100, later)), 10_000);
        assert_eq!(ms(pacer.reserve(100, later)), 10_100);
    }
}
