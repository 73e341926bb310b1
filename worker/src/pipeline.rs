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
use tokio::sync::mpsc;

use crate::accounting::{Counts, Progress, Tally};
use crate::config::Config;
use crate::fetch::{DeniedRun, Fetcher};
use crate::infer::{Embedder, RunProvenance};
use crate::manifest::Manifest;
use crate::resources::PoolPlan;
use crate::resume::{ResumeCheck, StoredPolicy};
use crate::shutdown::{Stop, StopReason};
use crate::{Ending, Fatal};

/// How often progress is logged (the progress bar, on a terminal, updates continuously).
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// What every stage carries: the tally its outcomes are counted in, and the stop signal it
/// watches (and raises on a fatal error).
#[derive(Clone)]
pub struct StageContext {
    /// Every line's outcome and each stage's busy time.
    pub tally: Arc<Tally>,
    /// SIGTERM or a fatal error elsewhere.
    pub stop: Stop,
}

/// Runs the child to its end: every line accounted and the report written, or stopped.
pub async fn run(
    config: &Config,
    plan: &PoolPlan,
    progress: Arc<dyn Progress>,
    stop: Stop,
) -> Ending {
    let started = Instant::now();
    match run_inner(config, plan, progress, &stop, started).await {
        Ok(ending) => ending,
        Err(fatal) => Ending::Failed(fatal),
    }
}

async fn run_inner(
    config: &Config,
    plan: &PoolPlan,
    progress: Arc<dyn Progress>,
    stop: &Stop,
    started: Instant,
) -> Result<Ending, Fatal> {
    log_start(config);
    let clients = Clients::connect(config).await;
    let Some((manifest, engine)) = load(config, &clients, stop).await? else {
        return Ok(interrupted(stop, Counts::default()));
    };
    log_loaded(config, plan, &manifest, &engine);
    let tally = Arc::new(
        Tally::new(manifest.images(), progress)
            .map_err(|e| Fatal::Transient(e.context("setting up the failure report")))?,
    );
    let cx = StageContext {
        tally: tally.clone(),
        stop: stop.clone(),
    };
    let ticker = tokio::spawn(log_progress(tally.clone(), started));
    let stages = run_stages(config, plan, &clients, manifest, engine, cx).await;
    ticker.abort();
    tally.progress().finish();
    stages?;
    finish(config, &clients.s3, &tally, stop, started).await
}

/// The AWS clients of one child, and the retry policy of its S3 reads.
struct Clients {
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    /// Waits of up to 0.1, 0.2, 0.4, ... 5 s between attempts: rides out a SlowDown burst.
    s3_policy: RetryPolicy,
}

impl Clients {
    async fn connect(config: &Config) -> Clients {
        let options = AwsOptions {
            attempt_timeout: Some(config.attempt_timeout()),
            ..AwsOptions::at(config.endpoint_url.clone(), config.region.clone())
        };
        let sdk = client::load(&options).await;
        Clients {
            s3: client::s3(&sdk),
            dynamodb: client::dynamodb(&sdk),
            s3_policy: RetryPolicy {
                max_attempts: config.fetch_attempts,
                base: Duration::from_millis(100),
                ..RetryPolicy::default()
            },
        }
    }
}

fn log_start(config: &Config) {
    tracing::info!(
        manifest = %config.layout().manifest(config.manifest_number()),
        table = %config.table,
        run_id = %config.run_id,
        job_id = config.job_id.as_deref().unwrap_or(""),
        model_spec = %config.model_spec.display(),
        "starting"
    );
}

/// The manifest and the model; loading the model (sha256, optimisation) overlaps the
/// manifest's download. `None` if the child is stopped first.
async fn load(
    config: &Config,
    clients: &Clients,
    stop: &Stop,
) -> Result<Option<(Arc<Manifest>, Arc<Engine>)>, Fatal> {
    let spec = ModelSpec::from_path(&config.model_spec)
        .with_context(|| format!("reading model spec {}", config.model_spec.display()))
        .map_err(Fatal::Permanent)?;
    let options = EngineOptions {
        batch: config
            .batch_size
            .map_or(EngineOptions::default().batch, |b| b as usize),
        conv: config.conv,
    };
    let load = tokio::task::spawn_blocking(move || Engine::load_with(&spec, options));
    let (uri, role) = (
        config.layout().manifest(config.manifest_number()),
        config.role(),
    );
    let manifest = tokio::select! {
        _ = stop.stopped() => return Ok(None),
        manifest = Manifest::download(&clients.s3, &uri, &clients.s3_policy, &role) => manifest?,
    };
    let engine = tokio::select! {
        _ = stop.stopped() => return Ok(None),
        engine = load => engine
            .map_err(|e| Fatal::Transient(anyhow!("loading the model panicked: {e}")))?
            .map_err(|e| Fatal::Permanent(e.into()))?,
    };
    Ok(Some((Arc::new(manifest), Arc::new(engine))))
}

fn log_loaded(config: &Config, plan: &PoolPlan, manifest: &Manifest, engine: &Engine) {
    tracing::info!(
        images = manifest.images(),
        model = %engine.spec().name,
        dimension = engine.dimension(),
        batch = engine.preferred_batch(),
        decode_threads = plan.decode_threads,
        infer_threads = plan.infer_threads,
        fetch_concurrency = config.fetch_concurrency,
        force = config.force,
        replace_model = config.replace_model,
        "manifest and model loaded"
    );
}

/// Starts the five stages joined by bounded channels and waits for all of them. The stages
/// end in order: each one's end closes the next one's input.
async fn run_stages(
    config: &Config,
    plan: &PoolPlan,
    clients: &Clients,
    manifest: Arc<Manifest>,
    engine: Arc<Engine>,
    cx: StageContext,
) -> Result<(), Fatal> {
    let batch = engine.preferred_batch();
    let (decode_threads, infer_threads) = (plan.decode_threads, plan.infer_threads);
    let fetch_concurrency = config.fetch_concurrency as usize;
    let write_concurrency = config.write_concurrency as usize;
    let (work_tx, work_rx) = mpsc::channel(fetch_concurrency.max(MAX_BATCH_WRITE_ITEMS));
    let (fetched_tx, fetched_rx) = mpsc::channel(decode_threads * 2);
    let (prepared_tx, prepared_rx) = crossbeam_channel::bounded(infer_threads * batch * 2);
    let (vector_tx, vector_rx) = mpsc::channel(MAX_BATCH_WRITE_ITEMS * (write_concurrency + 1));

    let embedder = Arc::new(Embedder {
        provenance: provenance(config, &engine),
        engine: engine.clone(),
    });
    let resume = tokio::spawn(crate::resume::run(
        manifest.clone(),
        resume_check(config, clients, &embedder.provenance),
        work_tx,
        cx.clone(),
    ));
    let fetch = tokio::spawn(crate::fetch::run(
        fetcher(config, clients, &manifest),
        fetch_concurrency,
        work_rx,
        fetched_tx,
        cx.clone(),
    ));
    let prepare = tokio::spawn(crate::prepare::run(
        engine,
        config.limits(plan),
        decode_pool(decode_threads)?,
        fetched_rx,
        prepared_tx,
        cx.clone(),
    ));
    let inference = crate::infer::spawn(
        embedder,
        infer_threads,
        batch,
        prepared_rx,
        vector_tx,
        cx.clone(),
    )
    .map_err(|e| Fatal::Transient(anyhow!("starting the inference threads: {e}")))?;
    let write = tokio::spawn(crate::write::run(
        writer(config, clients),
        write_concurrency,
        vector_rx,
        cx,
    ));

    let panicked = |stage: &str| Fatal::Transient(anyhow!("the {stage} stage panicked"));
    resume.await.map_err(|_| panicked("resume"))?;
    fetch.await.map_err(|_| panicked("fetch"))?;
    prepare.await.map_err(|_| panicked("prepare"))?;
    tokio::task::spawn_blocking(move || inference.into_iter().all(|t| t.join().is_ok()))
        .await
        .ok()
        .filter(|all_ok| *all_ok)
        .ok_or_else(|| panicked("inference"))?;
    write.await.map_err(|_| panicked("write"))
}

fn provenance(config: &Config, engine: &Engine) -> RunProvenance {
    RunProvenance {
        model: engine.spec().name.clone(),
        model_sha256: engine.spec().sha256.clone(),
        run_id: config.run_id.clone(),
        job_id: config.job_id.clone(),
        manifest: config.manifest_number() as u64,
    }
}

/// What resume asks the table; none with both `--force` and `--replace-model` (every line is
/// computed again, whatever is stored).
fn resume_check(
    config: &Config,
    clients: &Clients,
    provenance: &RunProvenance,
) -> Option<ResumeCheck> {
    (!(config.force && config.replace_model)).then(|| ResumeCheck {
        reader: TableReader::new(clients.dynamodb.clone(), config.table.clone()),
        policy: StoredPolicy {
            model_sha256: provenance.model_sha256.clone(),
            force: config.force,
            replace_model: config.replace_model,
        },
    })
}

fn fetcher(config: &Config, clients: &Clients, manifest: &Manifest) -> Fetcher {
    Fetcher::new(
        clients.s3.clone(),
        DeniedRun::new(manifest.images(), config.role()),
        config.max_encoded_bytes,
        config.buffer_mib.saturating_mul(1024 * 1024),
        config.attempt_timeout(),
        clients.s3_policy,
    )
}

fn writer(config: &Config, clients: &Clients) -> TableWriter {
    TableWriter::new(
        clients.dynamodb.clone(),
        config.table.clone(),
        WriterConfig {
            max_in_flight: config.write_concurrency as usize,
            ..WriterConfig::default()
        },
    )
}

fn decode_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>, Fatal> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("decode-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Fatal::Transient(anyhow!("starting the decode threads: {e}")))
}

/// After the stages: a stop or a fatal error ends the child here; otherwise every line must
/// be accounted, and the failure report and the summary are uploaded.
async fn finish(
    config: &Config,
    s3: &aws_sdk_s3::Client,
    tally: &Tally,
    stop: &Stop,
    started: Instant,
) -> Result<Ending, Fatal> {
    let counts = tally.counts();
    match stop.take_reason() {
        Some(StopReason::Failed(fatal)) => {
            log_summary(tally, started, "failed");
            return Err(fatal);
        }
        Some(StopReason::Signal(signal)) if !counts.complete() => {
            log_summary(tally, started, "interrupted");
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
        manifest: config.manifest_number(),
        images: counts.images,
        written: counts.written,
        skipped: counts.skipped,
        failed: counts.failed,
        seconds: started.elapsed().as_secs_f64(),
        job_id: config.job_id.clone(),
    };
    crate::reports::upload(s3, &config.layout(), tally, &summary)
        .await
        .map_err(Fatal::Transient)?;
    log_summary(tally, started, "done");
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
