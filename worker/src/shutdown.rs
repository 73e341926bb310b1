//! Stopping early: SIGTERM (spot reclaim, job cancel) or an infrastructure failure in any
//! stage. Either way the sources stop, in-flight work is finished or abandoned, and the vectors
//! already computed are flushed to the table before the child exits non-zero.

use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Why the pipeline stopped before the end of the manifest.
#[derive(Debug)]
pub enum StopReason {
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// A stage hit an error that retries did not fix.
    Failed(crate::Fatal),
}

/// The shared "stop now" switch. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stop {
    /// A switch that is not set.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when a stop is requested.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }

    /// Requests a stop; the first reason is kept.
    pub fn stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        match &reason {
            StopReason::Signal(name) => tracing::warn!(
                signal = name,
                "stopping: no new images, flushing the vectors already computed"
            ),
            StopReason::Failed(error) => {
                tracing::error!(error = %error, "stopping after an error retries did not fix")
            }
        }
        slot.get_or_insert(reason);
        self.token.cancel();
    }

    /// The reason of the first stop, if any.
    pub fn take_reason(&self) -> Option<StopReason> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Turns SIGTERM and SIGINT into [`Stop::stop`]. Must be called inside the runtime.
pub fn watch_signals(stop: Stop) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        stop.stop(StopReason::Signal(name));
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins() {
        let stop = Stop::new();
        assert!(!stop.is_stopped());
        stop.stop(StopReason::Signal("SIGTERM"));
        stop.stop(StopReason::Failed(crate::Fatal::Transient(
            anyhow::anyhow!("late"),
        )));
        assert!(stop.is_stopped());
        assert!(matches!(
            stop.take_reason(),
            Some(StopReason::Signal("SIGTERM"))
        ));
    }
}
