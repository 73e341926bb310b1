//! Inference on dedicated threads: each takes up to a batch of prepared images, runs the
//! shared engine (tract plans run in parallel on separate threads) and hands the vectors, with
//! their provenance, to the write stage.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::anyhow;
use embatch_engine::{Engine, Prepared};
use embatch_formats::run::now_rfc3339;
use embatch_records::vector::{VectorMetadata, VectorRecord};
use tokio::sync::mpsc;

use crate::accounting::{StageTimes, Tally};
use crate::pipeline::StageContext;
use crate::prepare::{ImageOrigin, PreparedImage};
use crate::shutdown::{Stop, StopReason};
use crate::Fatal;

/// What every vector of this child records about where it came from.
#[derive(Clone, Debug)]
pub struct RunProvenance {
    /// Model name from the spec.
    pub model: String,
    /// sha256 of the model file.
    pub model_sha256: String,
    /// The run id.
    pub run_id: String,
    /// The Batch job id.
    pub job_id: Option<String>,
    /// The manifest number.
    pub manifest: u64,
}

impl RunProvenance {
    fn record(&self, source: ImageOrigin, vector: Vec<f32>, created: &str) -> VectorRecord {
        let ImageOrigin {
            item,
            etag,
            size,
            width,
            height,
        } = source;
        VectorRecord {
            meta: VectorMetadata {
                created: Some(created.to_string()),
                source_uri: Some(item.line.uri()),
                source_etag: Some(etag),
                source_size: Some(size),
                width: Some(width),
                height: Some(height),
                model: Some(self.model.clone()),
                model_sha256: Some(self.model_sha256.clone()),
                run_id: Some(self.run_id.clone()),
                job_id: self.job_id.clone(),
                manifest: Some(self.manifest),
            },
            image_id: item.line.image_id,
            vector,
        }
    }
}

/// The engine and what its vectors record about their origin.
#[derive(Debug)]
pub struct Embedder {
    /// The loaded model.
    pub engine: Arc<Engine>,
    /// Stored with every vector.
    pub provenance: RunProvenance,
}

/// Starts `threads` inference threads reading `input` in batches of up to `batch` and writing
/// records to `output`. They end when the input is exhausted, the output is closed, or on
/// stop (finishing the batch in hand). An engine error stops the pipeline.
pub fn spawn(
    embedder: Arc<Embedder>,
    threads: usize,
    batch: usize,
    input: crossbeam_channel::Receiver<PreparedImage>,
    output: mpsc::Sender<VectorRecord>,
    cx: StageContext,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let StageContext { tally, stop } = cx;
    (0..threads.max(1))
        .map(|i| {
            let (embedder, input, output, tally, stop) = (
                embedder.clone(),
                input.clone(),
                output.clone(),
                tally.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || infer_loop(&embedder, batch.max(1), &input, &output, &tally, &stop))
        })
        .collect()
}

fn infer_loop(
    embedder: &Embedder,
    batch: usize,
    input: &crossbeam_channel::Receiver<PreparedImage>,
    output: &mpsc::Sender<VectorRecord>,
    tally: &Tally,
    stop: &Stop,
) {
    let Embedder { engine, provenance } = embedder;
    let mut sources: Vec<ImageOrigin> = Vec::with_capacity(batch);
    let mut tensors: Vec<Prepared> = Vec::with_capacity(batch);
    while !stop.is_stopped() {
        let Ok(first) = input.recv() else { return };
        let mut next = Some(first);
        while let Some(image) = next {
            sources.push(image.source);
            tensors.push(image.prepared);
            next = if tensors.len() < batch {
                input.try_recv().ok()
            } else {
                None
            };
        }
        let started = Instant::now();
        let result = engine.embed(&tensors);
        StageTimes::add(&tally.times.infer, started.elapsed());
        tensors.clear();
        let vectors = match result {
            Ok(vectors) if vectors.len() == sources.len() => vectors,
            Ok(vectors) => {
                let error = anyhow!(
                    "the engine returned {} vectors for {} images",
                    vectors.len(),
                    sources.len()
                );
                stop.stop(StopReason::Failed(Fatal::Transient(error)));
                return;
            }
            Err(e) => {
                // A fixed-size tensor either runs or the engine is broken: not the image's fault.
                let error = anyhow!("inference failed: {e}");
                stop.stop(StopReason::Failed(Fatal::Transient(error)));
                return;
            }
        };
        let created = now_rfc3339();
        for (source, vector) in sources.drain(..).zip(vectors) {
            if output
                .blocking_send(provenance.record(source, vector, &created))
                .is_err()
            {
                return;
            }
            tally.computed();
        }
    }
}
