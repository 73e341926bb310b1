//! Structured logs with `tracing`: JSON lines when stderr is not a terminal (CloudWatch),
//! human-readable text with a progress bar on a terminal. `RUST_LOG` overrides the filter.
//! The AWS SDK's own logs are kept at `warn`: its debug output is request-level detail.
//! Whatever `RUST_LOG` says, the SDK events that print the access key id stay off
//! ([`NoCredentials`]).

use std::io::{IsTerminal, Write};

use embatch_aws::sdk_log::NoCredentials;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use std::sync::Arc;

use embatch_worker::accounting::Progress;
use embatch_worker::config::LogFormat;

const DEFAULT_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,aws_sdk_s3=warn,aws_sdk_dynamodb=warn,hyper=warn,tract_core=warn,tract_onnx=warn,tract_hir=warn,tract_linalg=warn";

/// The filter: `RUST_LOG` (`level` and `target=level` directives) if it is set and valid,
/// else [`DEFAULT_FILTER`].
fn filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .and_then(|directives| directives.parse().ok())
        .unwrap_or_else(|| DEFAULT_FILTER.parse().expect("the default filter parses"))
}

/// Installs the global subscriber and returns the progress display (a bar only for text on
/// a terminal).
pub fn init(format: LogFormat) -> Arc<dyn Progress> {
    Arc::new(Bar(subscribe(format)))
}

/// The worker's progress as an indicatif bar (hidden unless text on a terminal).
#[derive(Debug)]
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, images: u64) {
        self.0.set_length(images);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn subscribe(format: LogFormat) -> ProgressBar {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    if json {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr);
        tracing_subscriber::registry()
            .with(filter)
            .with(NoCredentials)
            .with(json)
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
    tracing_subscriber::registry()
        .with(filter)
        .with(NoCredentials)
        .with(tracing_subscriber::fmt::layer().with_writer(AboveBar(bar.clone())))
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
    use tracing::Level;

    use super::filter;

    #[test]
    fn rust_log_directives_or_the_default() {
        let default = filter(None);
        assert!(default.would_enable("embatch_worker::pipeline", &Level::INFO));
        assert!(!default.would_enable("embatch_worker::pipeline", &Level::DEBUG));
        assert!(!default.would_enable("aws_sdk_s3::operation", &Level::INFO));
        assert!(default.would_enable("aws_sdk_s3::operation", &Level::WARN));
        assert!(!default.would_enable("tract_core::model", &Level::INFO));

        let set = filter(Some("debug,tract_core=error"));
        assert!(set.would_enable("aws_sdk_s3", &Level::DEBUG));
        assert!(!set.would_enable("tract_core::model", &Level::WARN));

        // Not a directive list: the default, not nothing.
        let invalid = filter(Some("embatch_worker=[loud]"));
        assert!(invalid.would_enable("embatch_worker", &Level::INFO));
        assert!(!invalid.would_enable("aws_sdk_s3", &Level::INFO));
    }
}
