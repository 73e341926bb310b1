//! The embatch worker: one AWS Batch array child embeds the images of one manifest.
//!
//! The image's path through the modules (see [`pipeline`] for the wiring):
//! [`manifest`] (read) → [`resume`] (skip what is stored) → [`fetch`] (S3) → [`prepare`]
//! (decode + preprocess, rayon) → [`infer`] (tract, dedicated threads) → [`write`] (DynamoDB).
//! [`accounting`] counts every line's outcome and spools the failure report, [`reports`]
//! uploads it and the summary; [`shutdown`] handles SIGTERM; [`resources`] sizes the pools
//! from the job's vCPUs and memory; [`config`] is the edge. The binary's logging and progress
//! bar (`main.rs`, `logging.rs`) stay out of the library.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

pub mod accounting;
pub mod config;
pub mod fetch;
pub mod infer;
pub mod manifest;
pub mod pipeline;
pub mod prepare;
pub mod reports;
pub mod resources;
pub mod resume;
pub mod shutdown;
pub mod write;

use embatch_formats::run::exit;

use std::sync::Arc;

use crate::accounting::{Counts, Progress};
use crate::config::Config;
use crate::resources::PoolPlan;
use crate::shutdown::{Stop, StopReason};

/// An error that ends the child before its manifest is done.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// Retrying cannot help: bad configuration, spec, model or manifest (exit 2).
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// Infrastructure still failing after retries (exit 75): AWS Batch retries the child.
    #[error("{0:#}")]
    Transient(anyhow::Error),
}

/// How a child ended.
#[derive(Debug)]
pub enum Ending {
    /// Every manifest line ended written, skipped or failed.
    Done(Counts),
    /// Stopped by a signal after flushing what was computed.
    Interrupted {
        /// The signal.
        signal: &'static str,
        /// The counts when it stopped.
        counts: Counts,
    },
    /// Stopped by an error.
    Failed(Fatal),
}

impl Ending {
    /// The process exit code (see [`embatch_formats::run::exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Ending::Done(_) => exit::DONE,
            Ending::Interrupted { .. } => exit::INTERRUPTED,
            Ending::Failed(Fatal::Permanent(_)) => exit::PERMANENT,
            Ending::Failed(Fatal::Transient(_)) => exit::TRANSIENT,
        }
    }
}

/// Runs the child: installs the SIGTERM handler, runs the pipeline, and bounds the time from a
/// stop to the exit by `--shutdown-timeout-secs`.
pub async fn run(config: Config, plan: PoolPlan, progress: Arc<dyn Progress>) -> Ending {
    let stop = Stop::new();
    if let Err(e) = shutdown::watch_signals(stop.clone()) {
        return Ending::Failed(Fatal::Transient(anyhow::anyhow!(
            "installing the SIGTERM handler: {e}"
        )));
    }
    let work = pipeline::run(&config, &plan, progress, stop.clone());
    let deadline = async {
        stop.stopped().await;
        tokio::time::sleep(config.shutdown_timeout()).await;
    };
    tokio::select! {
        ending = work => ending,
        () = deadline => {
            tracing::error!(
                seconds = config.shutdown_timeout_secs,
                "the flush did not finish in time; vectors not yet stored will be recomputed on retry"
            );
            match stop.take_reason() {
                Some(StopReason::Failed(fatal)) => Ending::Failed(fatal),
                Some(StopReason::Signal(signal)) => Ending::Interrupted { signal, counts: Counts::default() },
                None => Ending::Interrupted { signal: "unknown", counts: Counts::default() },
            }
        }
    }
}
