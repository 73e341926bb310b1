//! Fetching images from S3, many in flight, within a budget of buffered bytes.
//!
//! The SDK retries 5xx answers, throttling, timeouts and broken connections; a body cut short
//! or gone silent (which the SDK does not retry) and throttling that outlasts the SDK are
//! retried here with the shared backoff policy (see `embatch_aws::retry`). When either
//! gives up the child stops (exit 75). A missing or forbidden object, or one over the size limit, is a
//! permanent failure of that image only. The size limit is checked before downloading (the
//! manifest's size, then `Content-Length`) and again while the body streams in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};
use embatch_aws::retry::{is_throttling, is_transient_sdk_error, RetryPolicy};
use embatch_aws::sdk_error::{causes, describe};
use embatch_engine::ImageError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::accounting::StageTimes;
use crate::manifest::WorkItem;
use crate::pipeline::StageContext;
use crate::shutdown::StopReason;
use crate::Fatal;

/// The failure kind of an image the role may not read.
const ACCESS_DENIED: &str = "access_denied";

/// The budget is counted in units of this many bytes (semaphore permits are `u32`).
const BUDGET_UNIT: u64 = 1024;

/// An image downloaded in full.
#[derive(Debug)]
pub struct Downloaded {
    /// Its manifest line.
    pub item: WorkItem,
    /// The object's bytes.
    pub bytes: Bytes,
    /// The object's ETag as served (without quotes).
    pub etag: String,
    /// Its share of the buffer budget, released when the bytes are dropped.
    pub budget: OwnedSemaphorePermit,
}

/// Why an image was not fetched.
#[derive(Debug)]
pub enum FetchError {
    /// A permanent failure of this image (goes to the report).
    Image {
        /// The image.
        item: Box<WorkItem>,
        /// Stable kind for the report.
        kind: &'static str,
        /// What went wrong, naming the object.
        message: String,
    },
    /// S3 kept failing after the retries: the child cannot finish.
    Infrastructure(anyhow::Error),
    /// The role cannot read the images (see [`DeniedRun`]): retrying the child cannot help.
    Forbidden(anyhow::Error),
}

/// How many GETs in a row answered access denied end the child (exit 2) instead of recording
/// one `access_denied` failure per image: a whole path the job role cannot read (outside its
/// prefixes, a KMS key it may not use, a Requester Pays bucket) is a configuration error.
pub const DENIED_RUN: u64 = 16;

/// Counts GETs denied in a row (in completion order; any successful GET resets it). The child
/// fails when the count reaches `min(DENIED_RUN, images in the manifest)`: so a manifest
/// whose images are all denied fails, and so does any run of 16 denials.
#[derive(Debug)]
pub struct DeniedRun {
    limit: u64,
    run: std::sync::atomic::AtomicU64,
    role: String,
}

impl DeniedRun {
    /// The rule for a manifest of `images` lines, naming `role` in the error.
    pub fn new(images: u64, role: String) -> Self {
        Self {
            limit: DENIED_RUN.min(images).max(1),
            run: Default::default(),
            role,
        }
    }

    fn allowed(&self) {
        self.run.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a denied GET of `uri`; the error that ends the child once the run is long enough.
    fn denied(&self, uri: &str, bucket: &str) -> Option<anyhow::Error> {
        let run = 1 + self.run.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (run == self.limit).then(|| {
            anyhow!(
                "access denied to {run} images in a row (the last: {uri}): {} cannot read them in s3://{bucket}/. Grant it s3:GetObject there (the stack's ImagePrefixes), or submit only paths it can read",
                self.role
            )
        })
    }
}

/// Downloads images.
#[derive(Clone, Debug)]
pub struct Fetcher {
    s3: aws_sdk_s3::Client,
    denied: Arc<DeniedRun>,
    max_bytes: u64,
    stall_timeout: Duration,
    policy: RetryPolicy,
    budget: Arc<Semaphore>,
    budget_units: u32,
}

enum FetchAttempt {
    /// Kind and message of a permanent failure.
    Permanent((&'static str, String)),
    /// Worth another attempt of ours: a body cut short or stalled, or throttling.
    Retry(String),
    /// Transient, but the SDK already retried it: the child stops (exit 75).
    GaveUp(String),
}

impl Fetcher {
    /// A fetcher refusing objects over `max_bytes`, holding at most `budget_bytes` of image
    /// data at once (a single larger image still proceeds, alone), and abandoning (to retry)
    /// a download that receives nothing for `stall_timeout`.
    pub fn new(
        s3: aws_sdk_s3::Client,
        denied: DeniedRun,
        max_bytes: u64,
        budget_bytes: u64,
        stall_timeout: Duration,
        policy: RetryPolicy,
    ) -> Fetcher {
        let budget_units = u32::try_from(budget_bytes.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Fetcher {
            s3,
            denied: Arc::new(denied),
            max_bytes,
            stall_timeout,
            policy,
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
        }
    }

    fn units(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.budget_units)
    }

    /// Downloads one image, retrying transient failures.
    pub async fn fetch(
        &self,
        item: WorkItem,
        times: &StageTimes,
    ) -> Result<Downloaded, FetchError> {
        if item.line.size > self.max_bytes {
            let (kind, message) = too_large(&item, item.line.size, self.max_bytes);
            return Err(FetchError::Image {
                item: Box::new(item),
                kind,
                message,
            });
        }
        let mut budget = self
            .budget
            .clone()
            .acquire_many_owned(self.units(item.line.size))
            .await
            .map_err(|_| FetchError::Infrastructure(anyhow!("the fetch budget was closed")))?;
        let started = Instant::now();
        let mut backoff = self.policy.backoff();
        let result = loop {
            match self.attempt(&item, &mut budget).await {
                Ok((bytes, etag)) => {
                    break Ok(Downloaded {
                        item,
                        bytes,
                        etag,
                        budget,
                    })
                }
                Err(FetchAttempt::Permanent((kind, message))) => {
                    break Err(FetchError::Image {
                        item: Box::new(item),
                        kind,
                        message,
                    })
                }
                Err(FetchAttempt::GaveUp(message)) => {
                    break Err(FetchError::Infrastructure(anyhow!(
                        "fetching {} failed after the SDK's retries: {message}",
                        item.line.uri()
                    )));
                }
                Err(FetchAttempt::Retry(message)) => {
                    tracing::warn!(uri = %item.line.uri(), attempt = backoff.attempts(), error = %message, "transient S3 error, retrying");
                    if !backoff.wait().await {
                        break Err(FetchError::Infrastructure(anyhow!(
                            "fetching {} failed after {} attempts: {message}",
                            item.line.uri(),
                            backoff.attempts()
                        )));
                    }
                }
            }
        };
        StageTimes::add(&times.fetch, started.elapsed());
        match &result {
            Ok(_) => self.denied.allowed(),
            Err(FetchError::Image { item, kind, .. }) if *kind == ACCESS_DENIED => {
                if let Some(e) = self.denied.denied(&item.line.uri(), &item.line.bucket) {
                    return Err(FetchError::Forbidden(e));
                }
            }
            Err(_) => {}
        }
        result
    }

    async fn attempt(
        &self,
        item: &WorkItem,
        budget: &mut OwnedSemaphorePermit,
    ) -> Result<(Bytes, String), FetchAttempt> {
        let line = &item.line;
        let response = self
            .s3
            .get_object()
            .bucket(&line.bucket)
            .key(&line.key)
            .send()
            .await
            .map_err(|e| classify(item, e))?;
        let length = response
            .content_length()
            .and_then(|n| u64::try_from(n).ok());
        if let Some(length) = length {
            if length > self.max_bytes {
                return Err(FetchAttempt::Permanent(too_large(
                    item,
                    length,
                    self.max_bytes,
                )));
            }
            self.reserve(budget, length).await?;
        }
        let etag = response
            .e_tag()
            .map(|t| t.trim_matches('"').to_string())
            .unwrap_or_else(|| line.etag.clone());
        let capacity = length.unwrap_or(line.size).min(self.max_bytes);
        let bytes = self.read_body(item, response.body, capacity).await?;
        if let Some(length) = length {
            if bytes.len() as u64 != length {
                return Err(FetchAttempt::Retry(format!(
                    "reading {}: body ended after {} of {length} bytes",
                    line.uri(),
                    bytes.len()
                )));
            }
        }
        Ok((bytes.freeze(), etag))
    }

    /// The object may have grown since it was listed: takes the rest of its budget share.
    async fn reserve(
        &self,
        budget: &mut OwnedSemaphorePermit,
        length: u64,
    ) -> Result<(), FetchAttempt> {
        let have = budget.num_permits() as u32;
        let need = self.units(length);
        if need > have {
            let more = self
                .budget
                .clone()
                .acquire_many_owned(need - have)
                .await
                .map_err(|_| FetchAttempt::GaveUp("the fetch budget was closed".into()))?;
            budget.merge(more);
        }
        Ok(())
    }

    /// The whole body, refused past `max_bytes`, retried when it stalls or breaks. The SDK's
    /// attempt timeout ends with the response head; the body is ours to guard.
    async fn read_body(
        &self,
        item: &WorkItem,
        mut body: ByteStream,
        capacity: u64,
    ) -> Result<BytesMut, FetchAttempt> {
        let uri = item.line.uri();
        let mut bytes = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = tokio::time::timeout(self.stall_timeout, body.next())
            .await
            .map_err(|_| {
                FetchAttempt::Retry(format!(
                    "reading {uri}: no data for {:?} after {} bytes",
                    self.stall_timeout,
                    bytes.len()
                ))
            })?
        {
            let chunk = chunk.map_err(|e| {
                FetchAttempt::Retry(format!(
                    "reading {uri} failed after {} bytes: {}",
                    bytes.len(),
                    causes(&e)
                ))
            })?;
            let total = (bytes.len() + chunk.len()) as u64;
            if total > self.max_bytes {
                return Err(FetchAttempt::Permanent(too_large(
                    item,
                    total,
                    self.max_bytes,
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

fn too_large(item: &WorkItem, bytes: u64, max: u64) -> (&'static str, String) {
    let error = ImageError::TooLarge { bytes, max };
    (error.kind(), format!("{}: {error}", item.line.uri()))
}

fn classify(item: &WorkItem, error: SdkError<GetObjectError>) -> FetchAttempt {
    let uri = item.line.uri();
    if is_throttling(&error) {
        return FetchAttempt::Retry(format!("{uri}: {}", describe(&error)));
    }
    if is_transient_sdk_error(&error) {
        return FetchAttempt::GaveUp(format!("{uri}: {}", describe(&error)));
    }
    let status = error.raw_response().map(|r| r.status().as_u16());
    let kind = match (error.as_service_error(), status) {
        (Some(GetObjectError::NoSuchKey(_)), _) | (_, Some(404)) => "not_found",
        (_, Some(403)) => ACCESS_DENIED,
        _ => "s3_error",
    };
    let message = match kind {
        "not_found" => format!("{uri} does not exist"),
        ACCESS_DENIED => format!("{uri}: access denied"),
        _ => format!("{uri}: {}", describe(&error)),
    };
    FetchAttempt::Permanent((kind, message))
}

/// The fetch stage: downloads the items from `input`, `concurrency` at a time, into `output`.
/// Images that cannot be fetched are recorded in `tally`; an infrastructure failure stops the
/// pipeline. On stop, downloads in flight are abandoned.
pub async fn run(
    fetcher: Fetcher,
    concurrency: usize,
    mut input: mpsc::Receiver<WorkItem>,
    output: mpsc::Sender<Downloaded>,
    cx: StageContext,
) {
    let StageContext { tally, stop } = cx;
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = stop.stopped() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let item = tokio::select! {
            _ = stop.stopped() => break,
            item = input.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let (fetcher, output, tally, stop) =
            (fetcher.clone(), output.clone(), tally.clone(), stop.clone());
        tasks.spawn(async move {
            let _slot = slot;
            match fetcher.fetch(item, &tally.times).await {
                // A closed output means the pipeline is stopping: the image is abandoned.
                Ok(fetched) => {
                    let _ = output.send(fetched).await;
                }
                Err(FetchError::Image {
                    item,
                    kind,
                    message,
                }) => tally.fail(&item, kind, message),
                Err(FetchError::Infrastructure(e)) => {
                    stop.stop(StopReason::Failed(Fatal::Transient(e)));
                }
                Err(FetchError::Forbidden(e)) => {
                    stop.stop(StopReason::Failed(Fatal::Permanent(e)));
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    if stop.is_stopped() {
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
}
