//! The embatch submitter: from a list of S3 prefixes to AWS Batch array jobs, and the status
//! of a run.
//!
//! [`submit`] runs the stages in order, and nothing is written or submitted before every
//! check has passed:
//! 1. [`event`]: resolve the `{"Paths": [...]}` event to S3 prefixes;
//! 2. [`preflight`]: the paths are readable by the job role and listable, the job queue,
//!    job definition and table exist; [`model_check`]: the table holds no other model's
//!    vectors (one model per table) unless `--replace-model`;
//! 3. [`listing`] (or [`inventory`], an S3 Inventory report instead): list every prefix (all pages; large prefixes split into key ranges listed
//!    at once, [`key_ranges`]), keep images once each;
//! 4. [`plan`]: assign ImageIds (refusing collisions), chunk into manifests, split into jobs;
//! 5. [`submission`]: write the manifests, write `run.json`, submit the jobs one by one, each
//!    recorded in `run.json` as soon as AWS Batch has it.
//!
//! [`status`] follows a submitted run.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

pub mod cost;
pub mod event;
pub mod inventory;
pub mod key_ranges;
pub mod listing;
pub mod model_check;
pub mod plan;
pub mod preflight;
pub mod status;
pub mod submission;

use serde::Serialize;

use embatch_formats::image_id::ImageIdMode;
use embatch_formats::run::{
    new_run_id, now_rfc3339, RunLayout, RunPlan, SubmittedJob, MAX_ARRAY_SIZE,
};
use embatch_formats::s3uri::S3Uri;
use embatch_formats::spec::ModelSpec;
use embatch_records::reader::TableReader;

use crate::cost::{CostEstimate, CostInputs};
use crate::event::PathsEvent;
use crate::listing::{ExtensionFilter, ListOptions, ListingStats};
use crate::plan::{JobSpec, Planned, Planner};
use crate::submission::JobTarget;

/// Bad input from the user (event, flags, missing resources, colliding ImageIds): nothing
/// was written or submitted. The binary exits with code 2 on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

pub use embatch_formats::run::DEFAULT_MODEL_SPEC;

/// vCPU-seconds per image used for the `--dry-run` estimate unless told otherwise: about
/// 56 ms of tract ResNet18 inference per image per core plus ~20 ms to decode and
/// preprocess a large JPEG (the engine benchmark, BENCHMARKS.md, refines it).
pub const DEFAULT_SECONDS_PER_IMAGE: f64 = 0.08;

/// Everything `embatch submit` needs besides the event.
#[derive(Clone, Debug)]
pub struct SubmitOptions {
    /// The bucket plain paths refer to.
    pub bucket: Option<String>,
    /// Where runs are kept (default `s3://<bucket>/embatch-runs/`).
    pub runs_uri: Option<S3Uri>,
    /// AWS Batch job queue.
    pub job_queue: String,
    /// AWS Batch job definition.
    pub job_definition: String,
    /// DynamoDB table the workers write to.
    pub table: String,
    /// Model spec path inside the container.
    pub model_spec: String,
    /// Let the workers overwrite vectors another model computed (else each such image fails
    /// as `model_mismatch`).
    pub replace_model: bool,
    /// Images per manifest (one manifest per array child).
    pub images_per_job: usize,
    /// Children per array job, 2..=[`MAX_ARRAY_SIZE`] (AWS Batch's limits).
    pub max_array_size: usize,
    /// How ImageIds are made.
    pub image_id: ImageIdMode,
    /// Which objects are images.
    pub extensions: ExtensionFilter,
    /// How the prefixes are listed.
    pub listing: ListOptions,
    /// An S3 Inventory report's `manifest.json` to read the objects from instead of listing
    /// (the paths then choose which of its objects are embedded).
    pub inventory: Option<S3Uri>,
    /// vCPU-seconds per image for the estimate.
    pub seconds_per_image: f64,
    /// Dollars per vCPU-hour for the estimate.
    pub spot_price_per_vcpu_hour: f64,
    /// The prefixes the job role can read; when given, a path outside them is refused.
    pub readable_prefixes: Option<Vec<S3Uri>>,
    /// Plan only: list and count, write and submit nothing.
    pub dry_run: bool,
}

/// What `embatch submit` prints on stdout.
#[derive(Clone, Debug, Serialize)]
pub struct SubmitSummary {
    /// The run id.
    pub run_id: String,
    /// `true` when nothing was written or submitted.
    pub dry_run: bool,
    /// The run's folder.
    pub run_uri: String,
    /// Where the manifests are (`<run_uri>manifests/`).
    pub manifest_prefix: String,
    /// The run plan (`<run_uri>run.json`); not written on a dry run.
    pub plan_uri: String,
    /// Images in all manifests.
    pub images: u64,
    /// Manifests (= array children).
    pub manifests: usize,
    /// The jobs planned (dry run) or submitted.
    pub jobs: Vec<SubmittedJob>,
    /// What the listing saw and skipped.
    pub listing: ListingStats,
    /// Estimated vCPU-hours.
    pub estimated_vcpu_hours: f64,
    /// The per-image cost the estimate used.
    pub seconds_per_image: f64,
    /// What the run will cost in compute, DynamoDB and S3 ([`cost`]).
    pub cost: CostEstimate,
}

/// The AWS clients the submitter uses.
#[derive(Clone, Debug)]
pub struct Clients {
    /// S3.
    pub s3: aws_sdk_s3::Client,
    /// AWS Batch.
    pub batch: aws_sdk_batch::Client,
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl Clients {
    /// Clients from one SDK configuration (see `embatch_aws::client`).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            s3: embatch_aws::client::s3(config),
            batch: aws_sdk_batch::Client::new(config),
            dynamodb: embatch_aws::client::dynamodb(config),
        }
    }
}

/// The folder runs are kept in: `--runs-uri`, else `s3://<bucket>/embatch-runs/`.
pub fn runs_root(bucket: Option<&str>, runs_uri: Option<&S3Uri>) -> Result<S3Uri, InputError> {
    match (runs_uri, bucket) {
        (Some(uri), _) => Ok(uri.clone()),
        (None, Some(bucket)) => Ok(S3Uri::new(
            bucket,
            embatch_formats::run::DEFAULT_RUNS_PREFIX,
        )),
        (None, None) => Err(InputError(
            "no place for the run's manifests: give --bucket or --runs-uri".to_string(),
        )),
    }
}

/// Lists, plans, and (unless a dry run) writes the manifests, submits the jobs and writes
/// `run.json`.
pub async fn submit(
    clients: &Clients,
    event: &PathsEvent,
    options: &SubmitOptions,
) -> anyhow::Result<SubmitSummary> {
    options.validate()?;
    let roots = event.resolve(options.bucket.as_deref())?;
    let runs = runs_root(options.bucket.as_deref(), options.runs_uri.as_ref())?;
    let model = preflight(clients, &roots, &runs, options).await?;

    let planned = plan_manifests(clients, &roots, options).await?;
    let specs = plan::split_jobs(planned.manifests, options.max_array_size);

    let cost = cost::estimate(&CostInputs {
        images: planned.stats.images,
        manifests: planned.manifests as u64,
        list_pages: planned.stats.pages,
        // The model's when its spec can be read here, else ResNet18's.
        dimension: model.map_or(512, |spec| spec.dimension),
        seconds_per_image: options.seconds_per_image,
        spot_price_per_vcpu_hour: options.spot_price_per_vcpu_hour,
    });
    let run_id = new_run_id();
    let layout = RunLayout::new(&runs, &run_id);
    let mut summary = SubmitSummary {
        run_id: run_id.clone(),
        dry_run: options.dry_run,
        run_uri: layout.root.to_string(),
        manifest_prefix: layout.root.join("manifests/").to_string(),
        plan_uri: layout.plan().to_string(),
        images: planned.stats.images,
        manifests: planned.manifests,
        jobs: Vec::new(),
        estimated_vcpu_hours: cost.vcpu_hours,
        seconds_per_image: options.seconds_per_image,
        cost,
        listing: planned.stats.clone(),
    };
    if options.dry_run {
        summary.jobs = planned_jobs(&run_id, &specs);
        return Ok(summary);
    }

    tracing::info!(run_id = %run_id, manifests = planned.manifests, "writing manifests to {}", summary.manifest_prefix);
    submission::write_manifests(&clients.s3, &layout, &planned).await?;
    let target = JobTarget {
        queue: &options.job_queue,
        job_definition: &options.job_definition,
        run_id: &run_id,
        layout: &layout,
        table: &options.table,
        model_spec: &options.model_spec,
        replace_model: options.replace_model,
    };
    let mut plan = RunPlan {
        run_id: run_id.clone(),
        run_uri: layout.root.to_string(),
        table: options.table.clone(),
        images: summary.images,
        manifests: summary.manifests,
        jobs: planned_jobs(&run_id, &specs),
        submitted_at: now_rfc3339(),
    };
    submission::submit_jobs(clients, &target, &specs, &mut plan).await?;
    summary.jobs = plan.jobs;
    Ok(summary)
}

/// The listing (or the inventory) streamed into manifests in a local folder; an
/// [`InputError`] when it finds no image or two images with one ImageId.
async fn plan_manifests(
    clients: &Clients,
    roots: &[S3Uri],
    options: &SubmitOptions,
) -> anyhow::Result<Planned> {
    let mut planner = Planner::new(
        roots,
        &options.extensions,
        options.image_id,
        options.images_per_job,
    )?;
    let mut sink = |root, object| planner.offer(root, object);
    let requests = match &options.inventory {
        Some(manifest) => {
            inventory::read_inventory(&clients.s3, manifest, roots, &mut sink).await?
        }
        None => listing::list(&clients.s3, roots, &options.listing, &mut sink).await?,
    };
    let planned = planner.finish(&requests)?;
    let stats = &planned.stats;
    tracing::info!(?stats, "listing done");
    if stats.images == 0 {
        let paths: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
        return Err(InputError(format!(
            "no images under {paths:?} ({} objects listed: {} directory markers, {} not images, {} empty); nothing submitted",
            stats.objects, stats.directory_markers, stats.not_images, stats.empty
        ))
        .into());
    }
    Ok(planned)
}

impl SubmitOptions {
    /// The limits clap enforces for the binary, enforced again for library callers.
    fn validate(&self) -> Result<(), InputError> {
        if self.images_per_job == 0 {
            return Err(InputError("--images-per-job must be at least 1".into()));
        }
        if !(2..=MAX_ARRAY_SIZE).contains(&self.max_array_size) {
            return Err(InputError(format!(
                "--max-array-size must be 2..={MAX_ARRAY_SIZE} (AWS Batch's array sizes)"
            )));
        }
        Ok(())
    }
}

/// Every check that can fail before anything is written: the roots inside the job role's
/// readable prefixes, each root and the runs folder listable, the queue, the job definition
/// and the table present, and the table holding no other model's vectors. Returns the run's
/// model spec when it can be read here.
async fn preflight(
    clients: &Clients,
    roots: &[S3Uri],
    runs: &S3Uri,
    options: &SubmitOptions,
) -> anyhow::Result<Option<ModelSpec>> {
    if let Some(readable) = &options.readable_prefixes {
        preflight::check_readable(roots, readable)?;
    }
    let listable: Vec<S3Uri> = roots.iter().chain([runs]).cloned().collect();
    preflight::check_listable(&clients.s3, &listable).await?;
    preflight::check_job_queue(&clients.batch, &options.job_queue).await?;
    preflight::check_job_definition(&clients.batch, &options.job_definition).await?;
    preflight::check_table(&clients.dynamodb, &options.table).await?;
    let Some(model) = model_check::run_model(&options.model_spec)? else {
        tracing::warn!(
            "model spec {} is neither on this machine nor one the image ships: the table's model is not checked before the run (the workers still keep other models' vectors, failing those images as model_mismatch)",
            options.model_spec
        );
        return Ok(None);
    };
    let reader = TableReader::new(clients.dynamodb.clone(), &options.table);
    model_check::check_table_model(&reader, &options.model_spec, &model, options.replace_model)
        .await?;
    Ok(Some(model))
}

/// The jobs of a plan, not yet submitted (no job ids).
fn planned_jobs(run_id: &str, specs: &[JobSpec]) -> Vec<SubmittedJob> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| SubmittedJob {
            job_id: None,
            job_name: submission::job_name(run_id, i),
            manifest_offset: s.manifest_offset,
            array_size: s.array_size(),
        })
        .collect()
}
