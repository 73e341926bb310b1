//! Keeping credentials out of logs: whatever `RUST_LOG` says, the AWS SDK events that print
//! the signing identity stay off ([`NoCredentials`], a ceiling on top of a binary's filter). At
//! `debug` the endpoint resolver prints its parameters, and at `trace` the orchestrator and
//! the signer print the identity; both include the access key id (the SDK redacts the secret
//! key and the session token). Also the binaries' filter under that ceiling
//! ([`filter_from_env`]).

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};

/// A binary's log filter: `rust_log` (`RUST_LOG`'s `level` and `target=level` directives;
/// no span or field filters) if it is set and parses, else `default` (the binary's own
/// directives, which must parse).
pub fn filter(rust_log: Option<&str>, default: &str) -> Targets {
    rust_log
        .and_then(|directives| directives.parse().ok())
        .unwrap_or_else(|| default.parse().expect("the default filter parses"))
}

/// A binary's filter layer: [`filter`] with `RUST_LOG` from the environment, and the
/// [`NoCredentials`] ceiling on top of it, so that one never comes without the other.
pub fn filter_from_env<S: Subscriber>(default: &str) -> impl Layer<S> + Send + Sync {
    filter(std::env::var("RUST_LOG").ok().as_deref(), default).and_then(NoCredentials)
}

/// The most verbose level let through for these targets (and their modules; the longest
/// matching target applies), whatever the filter says: above it the SDK prints the
/// credentials' access key id.
const CEILINGS: [(&str, LevelFilter); 3] = [
    // "resolving endpoint" (debug): endpoint_params with the resolved identity.
    (
        "aws_smithy_runtime::client::orchestrator::endpoints",
        LevelFilter::INFO,
    ),
    // "resolved identity" (::auth) and the runtime components (trace).
    (
        "aws_smithy_runtime::client::orchestrator",
        LevelFilter::DEBUG,
    ),
    // "signing request" (trace): the signing params with the identity.
    ("aws_sigv4", LevelFilter::DEBUG),
];

/// A layer that only turns events off ([`CEILINGS`]); it never turns one on, and gives no
/// level hint, so the filter's maximum level (and the `log` crate's) stays as it was.
pub struct NoCredentials;

impl NoCredentials {
    fn allows(metadata: &Metadata<'_>) -> bool {
        let target = metadata.target();
        CEILINGS
            .iter()
            .filter(|(prefix, _)| {
                target == *prefix
                    || target
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with("::"))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .is_none_or(|(_, ceiling)| *ceiling >= *metadata.level())
    }
}

impl<S: Subscriber> Layer<S> for NoCredentials {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if Self::allows(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        Self::allows(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use tracing::Level;
    use tracing_subscriber::filter::Targets;

    use super::NoCredentials;

    /// The SDK at warn, as the worker and the submitter configure it by default.
    const DEFAULT: &str = "info,aws_smithy_runtime=warn,aws_sigv4=warn";

    fn filter(rust_log: Option<&str>) -> Targets {
        super::filter(rust_log, DEFAULT)
    }

    #[test]
    fn rust_log_directives_or_the_default() {
        assert!(filter(None).would_enable("embatch_worker", &Level::INFO));
        assert!(!filter(None).would_enable("aws_smithy_runtime::client", &Level::INFO));

        let set = filter(Some("warn,embatch_worker::pipeline=debug"));
        assert!(set.would_enable("embatch_worker::pipeline", &Level::DEBUG));
        assert!(!set.would_enable("embatch_worker::fetch", &Level::INFO));
        assert!(set.would_enable("aws_smithy_runtime", &Level::WARN));

        // Not a directive list: the default.
        let invalid = filter(Some("embatch_worker=loud"));
        assert!(invalid.would_enable("embatch_worker", &Level::INFO));
        assert!(!invalid.would_enable("embatch_worker", &Level::DEBUG));
        // EnvFilter's span syntax is not ours: that directive names no target.
        let span = filter(Some("info,embatch_worker[run]=debug"));
        assert!(span.would_enable("embatch_worker", &Level::INFO));
        assert!(!span.would_enable("embatch_worker", &Level::DEBUG));
    }

    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many of the SDK's identity-printing events, and of three ordinary SDK events at
    /// debug level under the same targets, pass the filter made from `rust_log` and
    /// [`NoCredentials`].
    fn passed(rust_log: Option<&str>) -> (usize, usize) {
        let count = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(filter(rust_log))
            .with(NoCredentials)
            .with(Count(count.clone()));
        let mut ordinary = 0;
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator::endpoints", "resolving endpoint");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator::auth", "resolved identity");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "runtime components");
            tracing::trace!(target: "aws_sigv4::http_request::sign", "signing request");
            let before = count.load(Ordering::SeqCst);
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "retry settings");
            tracing::debug!(target: "aws_smithy_runtime::client::retries", "retry");
            tracing::debug!(target: "aws_sigv4::http_request::sign", "signed");
            ordinary = count.load(Ordering::SeqCst) - before;
        });
        (count.load(Ordering::SeqCst) - ordinary, ordinary)
    }

    #[test]
    fn identity_events_stay_off_whatever_rust_log_says() {
        // The default keeps the SDK at warn: the ceiling must not raise it.
        assert_eq!(passed(None), (0, 0));
        assert_eq!(passed(Some("info")), (0, 0));
        assert_eq!(passed(Some("debug")), (0, 3));
        assert_eq!(passed(Some("trace")), (0, 3));
        assert_eq!(
            passed(Some(
                "aws_smithy_runtime::client::orchestrator::endpoints=trace,aws_sigv4=trace"
            )),
            (0, 1)
        );
    }

    #[test]
    fn the_ceiling_gives_no_level_hint() {
        // So that the filter's maximum level (and the `log` crate's, which tract logs through)
        // is the filter's own.
        let hint = tracing_subscriber::registry()
            .with(filter(None))
            .with(NoCredentials);
        assert_eq!(
            tracing::Subscriber::max_level_hint(&hint),
            Some(LevelFilter::INFO)
        );
    }
}
