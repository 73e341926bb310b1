//! Structured logs with `tracing`: JSON lines when stderr is not a terminal (CloudWatch),
//! human-readable text with a progress bar on a terminal. `RUST_LOG` overrides the filter.
//! The AWS SDK's own logs are kept at `warn`: its debug output is request-level detail.
//! Whatever `RUST_LOG` says, the SDK events that print the access key id stay off
//! ([`sdk_log::NoCredentials`], under [`sdk_log::filter_from_env`]).

use std::io::{IsTerminal, Write};

use embatch_aws::sdk_log;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use std::sync::Arc;

use embatch_worker::accounting::Progress;
use embatch_worker::config::LogFormat;

const DEFAULT_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,aws_sdk_s3=warn,aws_sdk_dynamodb=warn,hyper=warn,tract_core=warn,tract_onnx=warn,tract_hir=warn,tract_linalg=warn";

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
    let filter = sdk_log::filter_from_env(DEFAULT_FILTER);
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

    #[test]
    fn the_default_keeps_the_sdk_and_tract_at_warn() {
        let default = embatch_aws::sdk_log::filter(None, super::DEFAULT_FILTER);
        assert!(default.would_enable("embatch_worker::pipeline", &Level::INFO));
        assert!(!default.would_enable("embatch_worker::pipeline", &Level::DEBUG));
        for quiet in [
            "aws_sdk_s3::operation",
            "aws_smithy_runtime",
            "tract_core::model",
        ] {
            assert!(!default.would_enable(quiet, &Level::INFO), "{quiet}");
            assert!(default.would_enable(quiet, &Level::WARN), "{quiet}");
        }
    }
}
