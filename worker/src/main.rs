//! `embatch-worker`: the container entrypoint AWS Batch runs for each array child.

use clap::Parser;
use embatch_records::run::exit;
use embatch_worker::config::Config;
use embatch_worker::{logging, Ending};

fn main() {
    // Bad flags exit 2 (clap's code, which is also `exit::PERMANENT`).
    let config = Config::parse();
    let progress = logging::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(exit::TRANSIENT);
        }
    };
    let ending = runtime.block_on(embatch_worker::run(config, progress));
    match &ending {
        Ending::Done(_) => {}
        Ending::Interrupted { signal, counts } => tracing::warn!(
            signal,
            written = counts.written,
            "interrupted; the retry resumes where this attempt stopped"
        ),
        Ending::Failed(fatal) => tracing::error!(error = %fatal, "failed"),
    }
    // Exit now: threads still blocked on abandoned work must not delay the exit.
    std::process::exit(ending.exit_code());
}
