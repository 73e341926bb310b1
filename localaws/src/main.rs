//! `embatch-local`: the whole embatch pipeline on this machine, against a local AWS emulator.
//!
//! Starts the emulator, creates the bucket, table and Batch resources, uploads a folder of
//! images (or a generated sample set), runs the real submitter, plays AWS Batch by running the
//! real worker for every array child, then reads the vectors back and prints what a person
//! wants to see: counts, failures with reasons, throughput, and nearest neighbours.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};

use embatch_aws::client;
use embatch_aws::objects::{self, get_if_exists};
use embatch_formats::report::{read_failures, ChildSummary, FailureLine};
use embatch_formats::run::RunLayout;
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::emulator::Emulator;
use embatch_localaws::{batch, bins, python, sample, test_model};
use embatch_prepare::spec::{ModelFileError, ModelSpec};
use embatch_records::nearest::Index;
use embatch_records::vector::VectorRecord;
use embatch_records::{reader::TableReader, table};

/// The local run: embed a folder of images with the real submitter and worker against a local
/// AWS emulator, and show the result.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A folder of images to embed (searched recursively). Default: a generated sample set
    /// of four visual families in six formats.
    dir: Option<PathBuf>,
    /// Model spec to embed with. Default: models/resnet18-v2-7.toml when `models/fetch` has
    /// put its model in place, else the generated random-weight test model (with a warning).
    #[arg(long)]
    model_spec: Option<PathBuf>,
    /// Images per manifest (= per array child). Default: a quarter of the files (at most
    /// 1000), so that even the sample set runs as an array job of several children.
    #[arg(long)]
    images_per_job: Option<usize>,
    /// Array children run at once.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Images whose nearest neighbours are printed.
    #[arg(long, default_value_t = 4)]
    show: usize,
    /// Leave the emulator running at the end and print how to reach it.
    #[arg(long)]
    keep: bool,
}

const BUCKET: &str = "embatch-local";
const TABLE: &str = "embatch-vectors";
const PREFIX: &str = "images/";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tokio::select! {
        result = run(args) => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("embatch-local: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => {
            // Dropping the run future drops the emulator, which stops it.
            eprintln!("embatch-local: interrupted; emulator stopped");
            ExitCode::from(130)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (submitter, worker) = (bins::binary("embatch")?, bins::binary("embatch-worker")?);
    let spec = choose_model(args.model_spec.clone())?;
    let cloud = LocalCloud::start(args.keep).await?;
    let images = collect_images(args.dir.as_deref())?;
    upload_images(&cloud.s3, &images).await?;

    say(&format!("embatch submit {{\"Paths\": [\"{PREFIX}\"]}}"));
    let event = format!(r#"{{"Paths": ["{PREFIX}"]}}"#);
    let images_per_job = args
        .images_per_job
        .unwrap_or_else(|| images.len().div_ceil(4).clamp(1, 1000));
    let output = run_submitter(
        &submitter,
        &cloud.emulator,
        &cloud.resources,
        &spec,
        &event,
        images_per_job,
    )
    .await?;
    let submitted = Submitted::read(&output)?;

    say(&format!(
        "playing AWS Batch: {} array children, {} at a time",
        submitted.manifests, args.parallel
    ));
    let started = Instant::now();
    let runs = batch::Player::new(&worker, &cloud.emulator)
        .parallelism(args.parallel)
        .play(&cloud.batch, &submitted.job_ids)
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    for r in runs.iter().filter(|r| !r.success()) {
        eprintln!(
            "child {} exited with {:?}:\n{}",
            r.job_id,
            r.exit_code,
            tail(&r.stderr, 15)
        );
    }

    let (summaries, failures) =
        read_reports(&cloud.s3, &submitted.layout, submitted.manifests).await?;
    let records: Vec<VectorRecord> = TableReader::new(cloud.dynamodb.clone(), TABLE)
        .scan(4)
        .try_collect()
        .await
        .context("reading the vectors back")?;
    print_report(&Report {
        run_id: &submitted.run_id,
        listing: &output["listing"],
        summaries: &summaries,
        failures: &failures,
        children_failed: runs.iter().filter(|r| !r.success()).count(),
        seconds,
        records: &records,
        show: args.show,
    });

    if args.keep {
        print_keep_instructions(&cloud.emulator, &spec);
        std::mem::forget(cloud.emulator);
    }
    if runs.iter().any(|r| !r.success()) {
        bail!("some array children failed (see above)");
    }
    Ok(())
}

/// The emulator with the local run's bucket, table and Batch queue, and clients for it.
struct LocalCloud {
    emulator: Emulator,
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    batch: aws_sdk_batch::Client,
    resources: batch::BatchResources,
}

impl LocalCloud {
    async fn start(keep: bool) -> anyhow::Result<LocalCloud> {
        say("starting the AWS emulator on 127.0.0.1");
        let emulator = if keep {
            Emulator::start_kept()?
        } else {
            Emulator::start()?
        };
        let config = emulator.sdk_config().await;
        let (s3, dynamodb) = (client::s3(&config), client::dynamodb(&config));
        say("creating the bucket, the vector table and the Batch queue");
        s3.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .context("creating the bucket")?;
        table::create_table(&dynamodb, TABLE).await?;
        let resources = batch::create_resources(&emulator, &config, "embatch-local").await?;
        Ok(LocalCloud {
            batch: aws_sdk_batch::Client::new(&config),
            emulator,
            s3,
            dynamodb,
            resources,
        })
    }
}

async fn upload_images(
    s3: &aws_sdk_s3::Client,
    images: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    say(&format!(
        "uploading {} files to s3://{BUCKET}/{PREFIX}",
        images.len()
    ));
    futures::stream::iter(images)
        .map(|(name, bytes)| async move {
            let uri = S3Uri::new(BUCKET, format!("{PREFIX}{name}"));
            objects::put(s3, &uri, bytes.clone().into(), "application/octet-stream").await
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// What the submitter's JSON summary says the local run needs.
struct Submitted {
    run_id: String,
    layout: RunLayout,
    job_ids: Vec<String>,
    manifests: usize,
}

impl Submitted {
    fn read(output: &serde_json::Value) -> anyhow::Result<Submitted> {
        let field = |name: &str| {
            output[name]
                .as_str()
                .with_context(|| format!("the submitter's output lacks {name}"))
        };
        let job_ids = output["jobs"]
            .as_array()
            .context("the submitter's output lacks jobs")?
            .iter()
            .filter_map(|j| j["job_id"].as_str().map(str::to_string))
            .collect();
        Ok(Submitted {
            run_id: field("run_id")?.to_string(),
            layout: RunLayout::from_root(S3Uri::parse(field("run_uri")?)?),
            job_ids,
            manifests: output["manifests"].as_u64().unwrap_or(0) as usize,
        })
    }
}

fn say(what: &str) {
    eprintln!("==> {what}");
}

/// The spec to use, with a warning when it is the random-weight test model.
fn choose_model(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(spec) = explicit {
        return spec
            .canonicalize()
            .with_context(|| format!("model spec {}", spec.display()));
    }
    let spec = python::workspace_root().join("models/resnet18-v2-7.toml");
    if model_in_place(&spec)? {
        say(&format!("model: {} (pretrained ResNet18)", spec.display()));
        return Ok(spec);
    }
    eprintln!(
        "warning: the pretrained ResNet18 is not in place (run `models/fetch models/resnet18-v2-7.toml` \
         on a machine with internet); using the generated random-weight test model: the pipeline \
         runs end to end, but the vectors carry no meaning"
    );
    test_model::resnet18_spec()
}

/// Whether the spec's model file is there; an error if it is there but not the spec's file.
fn model_in_place(spec: &Path) -> anyhow::Result<bool> {
    match ModelSpec::from_path(spec)?.read_model() {
        Ok(_) => Ok(true),
        Err(ModelFileError::Io { .. }) => Ok(false),
        Err(e) => bail!("{e}: fetch it again with models/fetch"),
    }
}

/// `(relative name, bytes)` of every file under `dir`, or the generated sample set.
fn collect_images(dir: Option<&Path>) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let Some(dir) = dir else {
        return Ok(sample::generate(6, 7)
            .into_iter()
            .map(|s| (s.name, s.bytes))
            .collect());
    };
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("walkdir stays under its root");
        let name = rel.to_string_lossy().replace('\\', "/");
        let bytes = std::fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        out.push((name, bytes));
    }
    if out.is_empty() {
        bail!("{} holds no files", dir.display());
    }
    Ok(out)
}

async fn run_submitter(
    submitter: &Path,
    emulator: &Emulator,
    resources: &batch::BatchResources,
    spec: &Path,
    event: &str,
    images_per_job: usize,
) -> anyhow::Result<serde_json::Value> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(submitter)
        .arg("submit")
        .args(["--event", "-", "--bucket", BUCKET, "--table", TABLE])
        .args(["--job-queue", &resources.job_queue])
        .args(["--job-definition", &resources.job_definition])
        .args(["--images-per-job", &images_per_job.to_string()])
        .arg("--model-spec")
        .arg(spec)
        .envs(emulator.env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", submitter.display()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(event.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("the submitter failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("parsing the submitter's JSON summary")
}

async fn read_reports(
    s3: &aws_sdk_s3::Client,
    layout: &RunLayout,
    manifests: usize,
) -> anyhow::Result<(Vec<ChildSummary>, Vec<FailureLine>)> {
    let (mut summaries, mut failures) = (Vec::new(), Vec::new());
    for n in 0..manifests {
        let (summary, report) = (layout.summary(n), layout.failures(n));
        if let Some(bytes) = get_if_exists(s3, &summary).await? {
            summaries.push(serde_json::from_slice(&bytes).with_context(|| summary.to_string())?);
        }
        if let Some(bytes) = get_if_exists(s3, &report).await? {
            let (_, lines) =
                read_failures(&bytes, usize::MAX).with_context(|| report.to_string())?;
            failures.extend(lines);
        }
    }
    Ok((summaries, failures))
}

struct Report<'a> {
    run_id: &'a str,
    listing: &'a serde_json::Value,
    summaries: &'a [ChildSummary],
    failures: &'a [FailureLine],
    children_failed: usize,
    seconds: f64,
    records: &'a [VectorRecord],
    show: usize,
}

fn print_report(r: &Report) {
    let sum = |f: fn(&ChildSummary) -> u64| r.summaries.iter().map(f).sum::<u64>();
    let (images, written, skipped, failed) = (
        sum(|s| s.images),
        sum(|s| s.written),
        sum(|s| s.skipped),
        sum(|s| s.failed),
    );
    println!();
    println!("run {}", r.run_id);
    println!("  listing          {}", r.listing);
    println!("  images found     {images}");
    println!("  written          {written}");
    println!("  skipped          {skipped}");
    println!("  failed           {failed}");
    println!("  children failed  {}", r.children_failed);
    println!(
        "  throughput       {:.1} vectors/s ({written} in {:.1} s, all children)",
        written as f64 / r.seconds.max(1e-9),
        r.seconds
    );
    println!("  table items      {}", r.records.len());
    if !r.failures.is_empty() {
        println!("\nfailures:");
        for f in r.failures.iter().take(20) {
            println!("  {:<40} {:<16} {}", f.key, f.kind, f.message);
        }
        if r.failures.len() > 20 {
            println!("  ... and {} more", r.failures.len() - 20);
        }
    }
    print_neighbours(r.records, r.show);
}

/// Cosine nearest neighbours (`embatch_records::nearest`, as `embatch-vectors nearest`): a
/// few images in full, and for all images how often the nearest neighbour has the same label,
/// the name of its folder (sample set: the family).
fn print_neighbours(records: &[VectorRecord], show: usize) {
    if records.len() < 2 {
        return;
    }
    let mut ids: Vec<&str> = records.iter().map(|r| r.image_id.as_str()).collect();
    ids.sort_unstable();
    let index = match Index::from_records(records.to_vec()) {
        Ok(index) => index,
        Err(e) => return eprintln!("no nearest neighbours: {e}"),
    };
    let nearest = |id: &str, k| index.nearest_to(id, k).unwrap_or_default();
    // The label of an image is the name of the folder it is in (`train/ants/1.jpg` → `ants`).
    let folder = |id: &str| {
        let dir = id.rsplit_once('/').map(|(d, _)| d).unwrap_or_default();
        dir.rsplit('/').next().unwrap_or_default().to_string()
    };
    println!("\nnearest neighbours (cosine similarity):");
    let step = (ids.len() / show.max(1)).max(1);
    for id in ids.iter().step_by(step).take(show) {
        println!("  {id}");
        for n in nearest(id, 3) {
            println!("      {:.4}  {}", n.similarity, n.image_id);
        }
    }
    let mut same: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for id in &ids {
        let f = folder(id);
        let e = same.entry(f.clone()).or_default();
        e.1 += 1;
        if nearest(id, 1)
            .first()
            .is_some_and(|n| folder(&n.image_id) == f)
        {
            e.0 += 1;
        }
    }
    let (hits, total) = same.values().fold((0, 0), |(h, t), (a, b)| (h + a, t + b));
    println!(
        "\nnearest neighbour with the same label (folder name): {hits}/{total} ({:.1}%)",
        100.0 * hits as f64 / total as f64
    );
    for (f, (h, t)) in &same {
        println!("  {f:<40} {h}/{t}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn print_keep_instructions(emulator: &Emulator, spec: &Path) {
    let env: Vec<String> = emulator
        .env()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("\nemulator kept running");
    println!("  endpoint  {}", emulator.endpoint());
    println!("  pid       {}", emulator.pid());
    println!("  table     {TABLE}");
    println!("  model spec  {}", spec.display());
    println!("To look around:");
    println!("  export {}", env.join(" "));
    println!("  aws dynamodb scan --table-name {TABLE} --select COUNT");
    println!("  aws s3 ls --recursive s3://{BUCKET}/");
    // `cargo run` builds the reader's command line on first use (the local run does not).
    let vectors = "cargo run --release --locked -q --bin embatch-vectors --";
    println!("  {vectors} --table {TABLE} export --out vectors/");
    println!(
        "  {vectors} --table {TABLE} nearest --image IMAGE --model-spec {}",
        spec.display()
    );
    println!("stop it with: kill {}", emulator.pid());
}
