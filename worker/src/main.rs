//! `embatch-worker`: the container entrypoint AWS Batch runs for each array child.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

use clap::Parser;
use embatch_formats::run::exit;
use embatch_worker::config::Config;
use embatch_worker::resources::{JobResources, PoolPlan};
use embatch_worker::Ending;

mod embed;
mod logging;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "embed") {
        std::process::exit(embed::main(std::env::args_os().skip(1)));
    }
    // Bad flags exit 2 (clap's code, which is also `exit::PERMANENT`).
    let config = Config::parse();
    let progress = logging::init(config.log_format);
    let resources = JobResources::resolve(config.job_vcpus, config.job_memory_mib);
    let plan = PoolPlan::new(&resources, &config.pool_request());
    tracing::info!(
        vcpus = resources.vcpus,
        vcpus_from = resources.vcpus_from.name(),
        memory_mib = resources.memory.map(|b| b >> 20),
        memory_from = resources.memory_from.name(),
        infer_threads = plan.infer_threads,
        decode_threads = plan.decode_threads,
        decode_threads_memory_bound = plan.memory_bound,
        max_pixels = plan.max_pixels,
        "job resources"
    );
    // The async runtime only waits on S3 and DynamoDB: a few threads, whatever the job's size.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(resources.vcpus.clamp(2, 4))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(exit::TRANSIENT);
        }
    };
    let ending = runtime.block_on(embatch_worker::run(config, plan, progress));
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
