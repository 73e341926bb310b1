//! Structured logs with `tracing`: JSON lines when stderr is not a terminal (CloudWatch),
//! human-readable text with a progress bar on a terminal. `RUST_LOG` overrides the filter.
//! The AWS SDK's own logs are kept at `warn`: its debug output is request-level detail.
//!
//! Whatever `RUST_LOG` says, the SDK events that print the signing identity stay off
//! ([`NO_CREDENTIALS`]): at `debug` the endpoint resolver prints its parameters, and at `trace`
//! the orchestrator and the signer print the identity; both include the access key id (the
//! secret key and the session token are redacted by the SDK). A span-scoped directive
//! (`RUST_LOG='[span]=trace'`) is not capped.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,aws_sdk_s3=warn,aws_sdk_dynamodb=warn,hyper=warn,tract_core=warn,tract_onnx=warn,tract_hir=warn,tract_linalg=warn";

/// Caps added after `RUST_LOG`'s directives (a directive for the same target replaces the
/// user's; a more specific target wins over a shorter one): the events that print the
/// credentials' access key id.
pub const NO_CREDENTIALS: [&str; 3] = [
    // "resolving endpoint" (debug): endpoint_params with the resolved identity.
    "aws_smithy_runtime::client::orchestrator::endpoints=info",
    // "resolved identity" (::auth) and the runtime components (trace).
    "aws_smithy_runtime::client::orchestrator=debug",
    // "signing request" (trace): the signing params with the identity.
    "aws_sigv4=debug",
];

/// The filter: `RUST_LOG` if it is set and valid, else [`DEFAULT_FILTER`]; then
/// [`NO_CREDENTIALS`].
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let mut filter = rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    for cap in NO_CREDENTIALS {
        filter = filter.add_directive(cap.parse().expect("the directive is valid"));
    }
    filter
}

/// Installs the global subscriber and returns the progress bar (hidden unless text on a
/// terminal).
pub fn init(format: LogFormat) -> ProgressBar {
    let filter = filter(std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref());
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    if json {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return ProgressBar::hidden();
    }
    let bar = if terminal {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images ({per_sec}, eta {eta})",
            )
            .expect("the template is valid"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(AboveBar(bar.clone()))
        .init();
    bar
}

/// Writes each log event above the progress bar instead of through it.
#[derive(Clone)]
struct AboveBar(ProgressBar);

impl<'a> MakeWriter<'a> for AboveBar {
    type Writer = Event;

    fn make_writer(&'a self) -> Event {
        Event {
            bar: self.0.clone(),
            buf: Vec::new(),
        }
    }
}

/// One formatted event, written out in one piece when dropped.
struct Event {
    bar: ProgressBar,
    buf: Vec<u8>,
}

impl Write for Event {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.bar.suspend(|| {
            let _ = std::io::stderr().write_all(&buf);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::filter;

    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many of the SDK's identity-printing events (and one ordinary SDK debug event) pass
    /// the filter made from `rust_log`.
    fn passed(rust_log: Option<&str>) -> (usize, usize) {
        let count = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(filter(rust_log))
            .with(Count(count.clone()));
        let mut ordinary = 0;
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator::endpoints", "resolving endpoint");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator::auth", "resolved identity");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "runtime components");
            tracing::trace!(target: "aws_sigv4::http_request::sign", "signing request");
            let before = count.load(Ordering::SeqCst);
            tracing::debug!(target: "aws_smithy_runtime::client::retries", "retry");
            ordinary = count.load(Ordering::SeqCst) - before;
        });
        (count.load(Ordering::SeqCst) - ordinary, ordinary)
    }

    #[test]
    fn identity_events_stay_off_whatever_rust_log_says() {
        assert_eq!(passed(None), (0, 0));
        assert_eq!(passed(Some("trace")), (0, 1));
        assert_eq!(passed(Some("debug")), (0, 1));
        assert_eq!(
            passed(Some(
                "aws_smithy_runtime::client::orchestrator::endpoints=trace,aws_sigv4=trace"
            )),
            (0, 0)
        );
    }
}
