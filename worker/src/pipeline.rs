//! The image's path, as stages joined by bounded channels:
//!
//! ```text
//! manifest ─▶ resume ──(work)──▶ fetch ──(bytes)──▶ prepare ──(tensors)──▶ infer ──(vectors)──▶ write
//!  (S3)     (table:      tokio    (S3, N in   tokio  (rayon     crossbeam  (threads,  tokio    (table,
//!            stored?)            flight)             pool)                 tract)             ≤25/request)
//! ```
//!
//! Every channel is bounded and the fetch stage also holds a budget of encoded bytes, so memory
//! does not depend on the manifest's length. Every line ends counted in the [`Tally`]:
//! skipped or failed by resume, failed by fetch or prepare, written by write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use embatch_aws::client::{self, AwsOptions};
use embatch_aws::retry::RetryPolicy;
use embatch_engine::{Engine, EngineOptions, ModelSpec};
use embatch_formats::report::ChildSummary;
use embatch_records::reader::TableReader;
use embatch_records::writer::{TableWriter, WriterConfig, MAX_BATCH_WRITE_ITEMS};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use crate::accounting::{self, Counts, Tally};
use crate::config::Config;
use crate::fetch::{DeniedRun, Fetcher};
use crate::infer::{Embedder, RunProvenance};
use crate::manifest::Manifest;
use crate::resources::PoolPlan;
use crate::resume::ResumeCheck;
use crate::shutdown::{Stop, StopReason};
use crate::{Ending, Fatal};

/// How often progress is logged (the progress bar, on a terminal, updates continuously).
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Runs the child to its end: every line accounted and the report written, or stopped.
pub async fn run(config: &Config, plan: &PoolPlan, progress: ProgressBar, stop: Stop) -> Ending {
    let started = Instant::now();
    match run_inner(config, plan, progress, &stop, started).await {
        Ok(ending) => ending,
        Err(fatal) => Ending::Failed(fatal),
    }
}

async fn run_inner(
    config: &Config,
    plan: &PoolPlan,
    progress: ProgressBar,
    stop: &Stop,
    started: Instant,
) -> Result<Ending, Fatal> {
    let n = config.manifest_number();
    let layout = config.layout();
    let manifest_uri = layout.manifest(n);
    tracing::info!(
        manifest = %manifest_uri,
        table = %config.table,
        run_id = %config.run_id,
        job_id = config.job_id.as_deref().unwrap_or(""),
        model_spec = %config.model_spec.display(),
        "starting"
    );

    let spec = ModelSpec::from_path(&config.model_spec)
        .with_context(|| format!("reading model spec {}", config.model_spec.display()))
        .map_err(Fatal::Permanent)?;
    let sdk = client::load(&AwsOptions {
        endpoint_url: config.endpoint_url.clone(),
        region: config.region.clone(),
        attempt_timeout: Some(config.attempt_timeout()),
        initial_backoff: None,
    })
    .await;
    let (s3, dynamodb) = (client::s3(&sdk), client::dynamodb(&sdk));
    // Waits of up to 0.1, 0.2, 0.4, ... 5 s between attempts: rides out a SlowDown burst.
    let policy = RetryPolicy {
        max_attempts: config.fetch_attempts,
        base: Duration::from_millis(100),
        ..RetryPolicy::default()
    };

    // Loading the model (sha256, optimisation) overlaps the manifest download.
    let options = EngineOptions {
        batch: config
            .batch_size
            .map_or(EngineOptions::default().batch, |b| b as usize),
    };
    let load = tokio::task::spawn_blocking(move || Engine::load_with(&spec, options));
    let role = config.role();
    let manifest = tokio::select! {
        _ = stop.stopped() => return Ok(interrupted(stop, Counts::default())),
        manifest = Manifest::download(&s3, &manifest_uri, &policy, &role) => Arc::new(manifest?),
    };
    let engine = tokio::select! {
        _ = stop.stopped() => return Ok(interrupted(stop, Counts::default())),
        engine = load => engine
            .map_err(|e| Fatal::Transient(anyhow!("loading the model panicked: {e}")))?
            .map_err(|e| Fatal::Permanent(e.into()))?,
    };
    let engine = Arc::new(engine);
    let batch = engine.preferred_batch();
    let (decode_threads, infer_threads) = (plan.decode_threads, plan.infer_threads);
    tracing::info!(
        images = manifest.images(),
        model = %engine.spec().name,
        dimension = engine.dimension(),
        batch,
        decode_threads,
        infer_threads,
        fetch_concurrency = config.fetch_concurrency,
        force = config.force,
        "manifest and model loaded"
    );

    let tally = Arc::new(
        Tally::new(manifest.images(), progress)
            .map_err(|e| Fatal::Transient(e.context("setting up the failure report")))?,
    );
    let provenance = RunProvenance {
        model: engine.spec().name.clone(),
        model_sha256: engine.spec().sha256.clone(),
        run_id: config.run_id.clone(),
        job_id: config.job_id.clone(),
        manifest: n as u64,
    };
    let current = (!config.force).then(|| ResumeCheck {
        reader: TableReader::new(dynamodb.clone(), config.table.clone()),
        model_sha256: provenance.model_sha256.clone(),
    });
    let fetcher = Fetcher::new(
        s3.clone(),
        DeniedRun::new(manifest.images(), config.role()),
        config.max_encoded_bytes,
        config.buffer_mib.saturating_mul(1024 * 1024),
        config.attempt_timeout(),
        policy,
    );
    let writer = TableWriter::new(
        dynamodb,
        config.table.clone(),
        WriterConfig {
            max_in_flight: config.write_concurrency as usize,
            ..WriterConfig::default()
        },
    );
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(decode_threads)
            .thread_name(|i| format!("decode-{i}"))
            .build()
            .map_err(|e| Fatal::Transient(anyhow!("starting the decode threads: {e}")))?,
    );

    let fetch_concurrency = config.fetch_concurrency as usize;
    let (work_tx, work_rx) = mpsc::channel(fetch_concurrency.max(MAX_BATCH_WRITE_ITEMS));
    let (fetched_tx, fetched_rx) = mpsc::channel(decode_threads * 2);
    let (prepared_tx, prepared_rx) = crossbeam_channel::bounded(infer_threads * batch * 2);
    let (vector_tx, vector_rx) =
        mpsc::channel(MAX_BATCH_WRITE_ITEMS * (config.write_concurrency as usize + 1));

    // Not spawned: the table reader's future is not `Send` (a higher-ranked lifetime in its
    // stream of chunks); it runs on this task, joined with the wait for the other stages.
    let source = crate::resume::run(
        manifest.clone(),
        current,
        work_tx,
        tally.clone(),
        stop.clone(),
    );
    let fetch = tokio::spawn(crate::fetch::run(
        fetcher,
        fetch_concurrency,
        work_rx,
        fetched_tx,
        tally.clone(),
        stop.clone(),
    ));
    let prepare = tokio::spawn(crate::prepare::run(
        engine.clone(),
        config.limits(plan),
        pool,
        fetched_rx,
        prepared_tx,
        tally.clone(),
        stop.clone(),
    ));
    let inference = crate::infer::spawn(
        Arc::new(Embedder { engine, provenance }),
        infer_threads,
        batch,
        prepared_rx,
        vector_tx,
        tally.clone(),
        stop.clone(),
    )
    .map_err(|e| Fatal::Transient(anyhow!("starting the inference threads: {e}")))?;
    let write = tokio::spawn(crate::write::run(
        writer,
        config.write_concurrency as usize,
        vector_rx,
        tally.clone(),
        stop.clone(),
    ));
    let ticker = tokio::spawn(log_progress(tally.clone(), started));

    // The stages end in order: each one's end closes the next one's input.
    let panicked = |stage: &str| Fatal::Transient(anyhow!("the {stage} stage panicked"));
    let downstream = async {
        fetch.await.map_err(|_| panicked("fetch"))?;
        prepare.await.map_err(|_| panicked("prepare"))?;
        tokio::task::spawn_blocking(move || inference.into_iter().all(|t| t.join().is_ok()))
            .await
            .ok()
            .filter(|all_ok| *all_ok)
            .ok_or_else(|| panicked("inference"))?;
        write.await.map_err(|_| panicked("write"))
    };
    let ((), downstream) = tokio::join!(source, downstream);
    downstream?;
    ticker.abort();
    tally.progress().finish_and_clear();

    let counts = tally.counts();
    match stop.take_reason() {
        Some(StopReason::Failed(fatal)) => {
            log_summary(&tally, started, "failed");
            return Err(fatal);
        }
        Some(StopReason::Signal(signal)) if !counts.complete() => {
            log_summary(&tally, started, "interrupted");
            return Ok(Ending::Interrupted { signal, counts });
        }
        _ => {}
    }
    if !counts.complete() {
        return Err(Fatal::Transient(anyhow!(
            "{} of {} images ended without an outcome",
            counts.images - counts.accounted(),
            counts.images
        )));
    }

    let summary = ChildSummary {
        manifest: n,
        images: counts.images,
        written: counts.written,
        skipped: counts.skipped,
        failed: counts.failed,
        seconds: started.elapsed().as_secs_f64(),
        job_id: config.job_id.clone(),
    };
    tally
        .upload_report(&s3, &layout.failures(n))
        .await
        .map_err(Fatal::Transient)?;
    accounting::upload_summary(&s3, &layout.summary(n), &summary)
        .await
        .map_err(Fatal::Transient)?;
    log_summary(&tally, started, "done");
    Ok(Ending::Done(counts))
}

fn interrupted(stop: &Stop, counts: Counts) -> Ending {
    match stop.take_reason() {
        Some(StopReason::Failed(fatal)) => Ending::Failed(fatal),
        Some(StopReason::Signal(signal)) => Ending::Interrupted { signal, counts },
        None => Ending::Interrupted {
            signal: "unknown",
            counts,
        },
    }
}

async fn log_progress(tally: Arc<Tally>, started: Instant) {
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let c = tally.counts();
        tracing::info!(
            images = c.images,
            written = c.written,
            skipped = c.skipped,
            failed = c.failed,
            seconds = started.elapsed().as_secs_f64(),
            "progress"
        );
    }
}

/// The final line: counts, throughput, and busy seconds per stage (summed over each stage's
/// parallel workers, so they can exceed the wall time).
fn log_summary(tally: &Tally, started: Instant, outcome: &str) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = tally.counts();
    let seconds = started.elapsed().as_secs_f64();
    let secs = |stage: &std::sync::atomic::AtomicU64| stage.load(Relaxed) as f64 / 1e9;
    let t = &tally.times;
    tracing::info!(
        outcome,
        images = c.images,
        written = c.written,
        skipped = c.skipped,
        failed = c.failed,
        computed = c.computed,
        seconds,
        images_per_sec = c.accounted() as f64 / seconds.max(1e-9),
        written_per_sec = c.written as f64 / seconds.max(1e-9),
        resume_s = secs(&t.resume),
        fetch_s = secs(&t.fetch),
        decode_s = secs(&t.decode),
        infer_s = secs(&t.infer),
        write_s = secs(&t.write),
        "summary"
    );
}
