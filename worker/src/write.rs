//! The sink: vectors to the table in batches of up to 25 (one `BatchWriteItem`), a few batches
//! in flight. A vector counts as written only once DynamoDB has stored it. This stage never
//! stops early: it drains its input, so whatever was computed before a stop is flushed.

use std::time::{Duration, Instant};

use embatch_records::vector::VectorRecord;
use embatch_records::writer::{TableWriter, MAX_BATCH_WRITE_ITEMS};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::accounting::{Outcome, StageTimes};
use crate::pipeline::StageContext;
use crate::shutdown::StopReason;
use crate::Fatal;

/// How long a partial batch waits for more vectors before it is written anyway.
const LINGER: Duration = Duration::from_millis(200);

/// The write stage: stores everything from `input`, `concurrency` batches at a time, until the
/// input closes. A write that fails after the writer's retries stops the pipeline.
pub async fn run(
    writer: TableWriter,
    concurrency: usize,
    mut input: mpsc::Receiver<VectorRecord>,
    cx: StageContext,
) {
    let StageContext { tally, stop } = cx;
    let mut tasks = JoinSet::new();
    let mut closed = false;
    while !closed {
        let Some(first) = input.recv().await else {
            break;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH_WRITE_ITEMS);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH_WRITE_ITEMS {
            match tokio::time::timeout_at(deadline, input.recv()).await {
                Ok(Some(record)) => batch.push(record),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        while tasks.len() >= concurrency.max(1) {
            tasks.join_next().await;
        }
        let (writer, tally, stop) = (writer.clone(), tally.clone(), stop.clone());
        tasks.spawn(async move {
            let n = batch.len() as u64;
            let started = Instant::now();
            let result = writer.write(batch).await;
            StageTimes::add(&tally.times.write, started.elapsed());
            match result {
                Ok(()) => tally.add(Outcome::Written, n),
                Err(e) => {
                    // Every record not named as unwritten is stored.
                    tally.add(Outcome::Written, n - e.unwritten.len() as u64);
                    let fatal = if e.transient {
                        Fatal::Transient(e.into())
                    } else {
                        Fatal::Permanent(e.into())
                    };
                    stop.stop(StopReason::Failed(fatal));
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
