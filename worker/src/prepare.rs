//! Decode and preprocess on a rayon pool: encoded bytes in, fixed-size model tensors out.
//! At most one image per pool thread is in progress, so the pool's queue never grows; a bad
//! image is a permanent failure of that image.

use std::sync::Arc;
use std::time::Instant;

use embatch_engine::{Engine, Limits, Prepared};
use tokio::sync::{mpsc, Semaphore};

use crate::accounting::StageTimes;
use crate::fetch::Downloaded;
use crate::manifest::WorkItem;
use crate::pipeline::StageContext;

/// An image ready for inference.
#[derive(Debug)]
pub struct PreparedImage {
    /// Where it came from.
    pub source: ImageOrigin,
    /// The model input.
    pub prepared: Prepared,
}

/// Where a prepared image came from: what its vector records besides the vector.
#[derive(Debug)]
pub struct ImageOrigin {
    /// Its manifest line.
    pub item: WorkItem,
    /// The ETag of the bytes it was decoded from.
    pub etag: String,
    /// Size of those bytes.
    pub size: u64,
    /// Decoded width in pixels.
    pub width: u32,
    /// Decoded height in pixels.
    pub height: u32,
}

/// The prepare stage: decodes everything from `input` on `pool` into `output`. Returns when
/// the input ends (or on stop) and every started image is done.
pub async fn run(
    engine: Arc<Engine>,
    limits: Limits,
    pool: Arc<rayon::ThreadPool>,
    mut input: mpsc::Receiver<Downloaded>,
    output: crossbeam_channel::Sender<PreparedImage>,
    cx: StageContext,
) {
    let StageContext { tally, stop } = cx;
    let threads = pool.current_num_threads();
    let slots = Arc::new(Semaphore::new(threads));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let fetched = tokio::select! {
            _ = stop.stopped() => break,
            fetched = input.recv() => match fetched {
                Some(fetched) => fetched,
                None => break,
            },
        };
        let (engine, output, tally) = (engine.clone(), output.clone(), tally.clone());
        pool.spawn(move || {
            let _slot = slot;
            let started = Instant::now();
            let result = engine.prepare(&fetched.bytes, &limits);
            StageTimes::add(&tally.times.decode, started.elapsed());
            let Downloaded {
                item,
                bytes,
                etag,
                budget,
            } = fetched;
            let size = bytes.len() as u64;
            // The encoded bytes are done with: free them and their share of the budget
            // before possibly waiting on a full channel.
            drop(bytes);
            drop(budget);
            match result {
                Ok(prepared) => {
                    let image = PreparedImage {
                        source: ImageOrigin {
                            item,
                            etag,
                            size,
                            width: prepared.original_width,
                            height: prepared.original_height,
                        },
                        prepared,
                    };
                    // Disconnected means inference stopped: the image is abandoned.
                    let _ = output.send(image);
                }
                Err(error) => {
                    let message = format!("{}: {error}", item.line.uri());
                    tally.fail(&item, error.kind(), message);
                }
            }
        });
    }
    // Wait for the images in progress: each holds a slot until done.
    let _all = slots
        .acquire_many(threads as u32)
        .await
        .expect("never closed");
}
