//! `embatch`: submit a run of image embeddings to AWS Batch, and follow it.
//!
//! Exit codes: 0 done (status: every child SUCCEEDED and no image failed, or
//! `--allow-failed-images`); 1 an AWS or I/O error; 2 bad input (nothing was written or
//! submitted); 3 status: the run is still going; 4 status: the run finished with FAILED
//! children; 5 status: every child SUCCEEDED but some images failed (see the failure reports).
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use embatch_aws::client::{self, AwsOptions};
use embatch_aws::sdk_log;
use embatch_formats::image_id::ImageIdMode;
use embatch_formats::run::{env, submit_env};
use embatch_formats::s3uri::S3Uri;
use embatch_submitter::event::PathsEvent;
use embatch_submitter::listing::{ExtensionFilter, ListOptions, DEFAULT_EXTENSIONS};
use embatch_submitter::plan::DEFAULT_IMAGES_PER_JOB;
use embatch_submitter::{
    runs_root, status, submit, Clients, InputError, SubmitOptions, DEFAULT_MODEL_SPEC,
};

#[derive(Parser, Debug)]
#[command(
    name = "embatch",
    version,
    about = "Batch image embeddings on AWS Batch"
)]
struct Cli {
    /// Send AWS requests here (e.g. a local emulator); default: AWS_ENDPOINT_URL or AWS.
    #[arg(long, global = true, env = client::ENDPOINT_URL_ENV)]
    endpoint_url: Option<String>,
    /// AWS region; default: the SDK's provider chain (AWS_REGION, profile).
    #[arg(long, global = true)]
    region: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the paths, write manifests, submit array jobs; prints a JSON summary.
    Submit(Box<SubmitArgs>),
    /// The state of a run's children and the workers' counts; prints JSON.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// Prefixes in --bucket or s3://bucket/prefix URIs (instead of --event).
    #[arg(value_name = "PATH", conflicts_with = "event")]
    paths: Vec<String>,
    /// A file holding the event {"Paths": [...]}; `-` reads it from stdin.
    #[arg(long, value_name = "FILE")]
    event: Option<PathBuf>,
    /// The bucket plain paths refer to; runs are kept in s3://BUCKET/embatch-runs/.
    #[arg(long, env = submit_env::BUCKET)]
    bucket: Option<String>,
    /// Where runs are kept instead of s3://BUCKET/embatch-runs/.
    #[arg(long, value_name = "S3_URI")]
    runs_uri: Option<S3Uri>,
    /// AWS Batch job queue (name or ARN).
    #[arg(long, env = submit_env::JOB_QUEUE)]
    job_queue: String,
    /// AWS Batch job definition (name, name:revision or ARN).
    #[arg(long, env = submit_env::JOB_DEFINITION)]
    job_definition: String,
    /// DynamoDB table the workers write vectors to.
    #[arg(long, env = env::TABLE)]
    table: String,
    /// Model spec path inside the worker container. The submitter reads it (the same path on
    /// this machine, else the spec the image ships under that file name) to check the table's
    /// model before the run.
    #[arg(long, default_value = DEFAULT_MODEL_SPEC)]
    model_spec: String,
    /// Overwrite vectors another model computed. Without it a run is refused when a sample of
    /// the table holds another model's vectors, and the workers keep any they meet, recording
    /// each such image as failed (`model_mismatch`): a table holds one model's vectors.
    #[arg(long)]
    replace_model: bool,
    /// Images per manifest; one manifest per array child.
    #[arg(long, default_value_t = DEFAULT_IMAGES_PER_JOB, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    images_per_job: usize,
    /// Children per array job (AWS Batch allows 2..=10000); more manifests make more jobs.
    #[arg(long, default_value_t = embatch_formats::run::MAX_ARRAY_SIZE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=10_000))]
    max_array_size: usize,
    /// How an object becomes its ImageId.
    #[arg(long, default_value_t = ImageIdMode::Key, value_parser = image_id_mode())]
    image_id: ImageIdMode,
    /// Image file extensions, case-insensitive, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_EXTENSIONS.iter().map(|s| s.to_string()))]
    extensions: Vec<String>,
    /// vCPU-seconds per image for the estimate (default from the measured inference and
    /// decode cost of a large JPEG on one core).
    #[arg(long, default_value_t = embatch_submitter::DEFAULT_SECONDS_PER_IMAGE)]
    seconds_per_image: f64,
    /// Dollars per vCPU-hour for the cost estimate (Spot; check your region and instances).
    #[arg(long, default_value_t = embatch_submitter::cost::DEFAULT_SPOT_PRICE_PER_VCPU_HOUR)]
    spot_price: f64,
    /// The S3 prefixes the job role can read, comma-separated s3:// URIs (from the stack:
    /// s3://BucketName/ImagePrefix for each of ImagePrefixes). A path outside them is refused
    /// before anything is written.
    #[arg(
        long,
        env = submit_env::READABLE_PREFIXES,
        value_delimiter = ',',
        value_name = "S3_URIS"
    )]
    readable_prefixes: Option<Vec<S3Uri>>,
    /// ListObjectsV2 requests in flight at once: a prefix of more than 2,000 keys is split
    /// into key ranges listed side by side (1 lists each prefix page by page).
    #[arg(long, default_value_t = ListOptions::default().concurrency, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    list_concurrency: usize,
    /// Read the objects from this S3 Inventory report (its manifest.json; CSV or Parquet,
    /// checksums verified) instead of listing; the paths choose which of them are embedded.
    #[arg(long, value_name = "S3_URI")]
    inventory: Option<S3Uri>,
    /// List and plan only; write and submit nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The run id (with --bucket or --runs-uri) or the run's s3:// folder.
    run: String,
    /// The bucket the run is kept in (under embatch-runs/).
    #[arg(long, env = submit_env::BUCKET)]
    bucket: Option<String>,
    /// Where runs are kept instead of s3://BUCKET/embatch-runs/.
    #[arg(long, value_name = "S3_URI")]
    runs_uri: Option<S3Uri>,
    /// Refresh until every child has finished.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// Exit 0 when every child succeeded even if some images failed (corrupt, missing, ...).
    #[arg(long)]
    allow_failed_images: bool,
}

/// Our own crates at info unless `RUST_LOG` says otherwise.
const DEFAULT_LOG_FILTER: &str = "embatch_submitter=info,embatch=info";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::registry()
        // Whatever RUST_LOG says, no SDK event that prints the access key id.
        .with(sdk_log::filter_from_env(DEFAULT_LOG_FILTER))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only for a person at a terminal, never into a log file or CI
                // output.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("embatch: error: {e:#}");
            if e.downcast_ref::<InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = client::load(&AwsOptions::at(cli.endpoint_url, cli.region)).await;
    let clients = Clients::new(&config);
    match cli.command {
        Command::Submit(args) => {
            let event = read_event(&args)?;
            let options = SubmitOptions {
                bucket: args.bucket,
                runs_uri: args.runs_uri,
                job_queue: args.job_queue,
                job_definition: args.job_definition,
                table: args.table,
                model_spec: args.model_spec,
                replace_model: args.replace_model,
                images_per_job: args.images_per_job,
                max_array_size: args.max_array_size,
                image_id: args.image_id,
                extensions: ExtensionFilter::new(&args.extensions),
                listing: ListOptions {
                    concurrency: args.list_concurrency,
                    ..ListOptions::default()
                },
                inventory: args.inventory,
                seconds_per_image: args.seconds_per_image,
                spot_price_per_vcpu_hour: args.spot_price,
                readable_prefixes: args.readable_prefixes,
                dry_run: args.dry_run,
            };
            let summary = submit(&clients, &event, &options).await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let runs = match (&args.runs_uri, &args.bucket) {
                (None, None) => None,
                (uri, bucket) => Some(runs_root(bucket.as_deref(), uri.as_ref())?),
            };
            let layout = status::locate(&args.run, runs.as_ref())?;
            let mut cache = status::ReportCache::default();
            let display = StatusDisplay::new();
            let state = loop {
                let state = status::run_status(&clients, &layout, &mut cache).await?;
                display.show(&state);
                if !args.watch || state.finished {
                    break state;
                }
                tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
            };
            display.finish();
            println!("{}", serde_json::to_string_pretty(&state)?);
            let images_failed = state.reports.failed.max(state.reports.failure_lines) > 0;
            Ok(
                if state.succeeded && (!images_failed || args.allow_failed_images) {
                    ExitCode::SUCCESS
                } else if state.succeeded {
                    ExitCode::from(5)
                } else if state.finished {
                    ExitCode::from(4)
                } else {
                    ExitCode::from(3)
                },
            )
        }
    }
}

/// `embatch status`'s progress on stderr: on a terminal, a bar of the children that have
/// reported, with the status line beside it; elsewhere (logs, CI) the line, once a poll.
struct StatusDisplay(Option<indicatif::ProgressBar>);

impl StatusDisplay {
    fn new() -> StatusDisplay {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} children reported  {msg}",
            )
            .expect("a valid template");
            indicatif::ProgressBar::new(0).with_style(style)
        });
        StatusDisplay(bar)
    }

    fn show(&self, state: &status::RunStatus) {
        match &self.0 {
            Some(bar) => {
                bar.set_length(state.manifests as u64);
                bar.set_position(state.reports.summaries as u64);
                bar.set_message(state.line());
            }
            None => eprintln!("{}", state.line()),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}

/// The event from the arguments, the --event file, or stdin (`--event -`).
fn read_event(args: &SubmitArgs) -> anyhow::Result<PathsEvent> {
    match &args.event {
        Some(path) if path.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| InputError(format!("reading the event from stdin: {e}")))?;
            Ok(PathsEvent::from_json(&bytes, "stdin")?)
        }
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| InputError(format!("reading the event file {}: {e}", path.display())))?;
            Ok(PathsEvent::from_json(&bytes, &path.display().to_string())?)
        }
        None if !args.paths.is_empty() => Ok(PathsEvent {
            paths: args.paths.clone(),
        }),
        None => Err(InputError(
            "no paths: give PATH arguments, --event FILE, or --event - to read the event from stdin"
                .to_string(),
        )
        .into()),
    }
}

/// `--image-id`: the names of [`ImageIdMode`], listed in the help.
fn image_id_mode() -> impl clap::builder::TypedValueParser<Value = ImageIdMode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(ImageIdMode::ALL.map(ImageIdMode::name))
        .try_map(|name| name.parse::<ImageIdMode>())
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    #[test]
    fn the_default_logs_our_crates_at_info_and_nothing_else() {
        let default = embatch_aws::sdk_log::filter(None, super::DEFAULT_LOG_FILTER);
        assert!(default.would_enable("embatch_submitter::listing", &Level::INFO));
        assert!(default.would_enable("embatch_aws::client", &Level::INFO));
        assert!(!default.would_enable("embatch_submitter", &Level::DEBUG));
        assert!(!default.would_enable("aws_smithy_runtime", &Level::WARN));
    }
}
