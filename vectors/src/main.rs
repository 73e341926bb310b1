//! `embatch-vectors`: read embatch's vector table.
//!
//! ```text
//! embatch-vectors --table T get ID... [--json]    vectors by id (JSON Lines with --json)
//! embatch-vectors --table T export --out DIR      DIR/vectors.npy (float32 [N, D]) + DIR/ids.jsonl
//! embatch-vectors --table T export --format parquet --out DIR|s3://bucket/prefix/
//!                                                 part-NNNNN.parquet files + _embatch-export.json
//! embatch-vectors --table T nearest ID [-k 10]    the K most similar vectors (exact cosine)
//! embatch-vectors nearest ID --export DIR         the same over an export (npy or Parquet)
//! embatch-vectors nearest --image FILE [--model-spec S] ...
//!                                                 the vectors nearest an image file's (embedded
//!                                                 by `embatch-worker embed`)
//! embatch-vectors --table T index --vector-bucket B --index I [--create] [--from-export DIR]
//!                                                 load an Amazon S3 Vectors index
//! ```
//! Exit status: 0 on success, 1 if `get` or `nearest` found no item for some id or `index`
//! skipped a vector the service refuses, 2 on errors.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

mod parquet_export;
mod query_image;
mod vector_index;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use embatch_aws::client::{self, AwsOptions};
use embatch_formats::run::env;
use embatch_records::export::{export, IDS_FILE, VECTORS_FILE};
use embatch_records::nearest::{Index, IndexError, Neighbour};
use embatch_records::parquet::{read_records, ParquetOptions};
use embatch_records::reader::TableReader;
use embatch_records::vector::{attr, MetaValue, VectorRecord, DATA_TYPE_F32};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};

/// Read vectors from embatch's DynamoDB table.
#[derive(Parser)]
#[command(name = "embatch-vectors", version)]
struct Cli {
    /// The DynamoDB table.
    #[arg(long, env = env::TABLE, global = true)]
    table: Option<String>,
    /// Send requests here instead of AWS (e.g. a local emulator).
    #[arg(long, env = embatch_aws::client::ENDPOINT_URL_ENV, global = true)]
    endpoint_url: Option<String>,
    /// AWS region (default: the SDK's provider chain, e.g. AWS_REGION).
    #[arg(long, global = true)]
    region: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the vectors of the given ImageIds.
    Get {
        /// ImageIds to fetch.
        #[arg(required = true)]
        ids: Vec<String>,
        /// One JSON object per found item (attribute names as in the table; `Vector` as a
        /// list of numbers, NaN and infinities as null), instead of a summary line.
        #[arg(long)]
        json: bool,
    },
    /// Write the whole table: as npy, DIR/vectors.npy and DIR/ids.jsonl (line i = row i's
    /// id); as Parquet, part-NNNNN.parquet files (one row per image, the vector and every
    /// provenance attribute) and _embatch-export.json, in DIR or under s3://bucket/prefix/.
    Export(ExportArgs),
    /// Load the vectors into an Amazon S3 Vectors index: key = ImageId, metadata SourceUri and
    /// Model (filterable), ModelSha256 and SourceEtag (not); only what is missing or changed is
    /// written, paced below the index's write limits.
    Index(IndexArgs),
    /// The K vectors most similar to ID's, or to an image file's (exact cosine similarity, all
    /// cores), read from the table (a whole scan) or from an export directory.
    Nearest(NearestArgs),
}

/// `embatch-vectors nearest`.
#[derive(Args)]
#[command(group(ArgGroup::new("query").required(true).args(["id", "image"])))]
struct NearestArgs {
    /// The ImageId whose neighbours are wanted.
    id: Option<String>,
    /// Instead of an ImageId, an image file: embedded by `embatch-worker embed` with
    /// --model-spec, which must be the model that computed the vectors.
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// The spec of the vectors' model, for --image (default: the worker's default spec).
    #[arg(long, value_name = "TOML", requires = "image")]
    model_spec: Option<PathBuf>,
    /// The embatch-worker binary that embeds --image (default: the one beside this program,
    /// else `embatch-worker` on PATH).
    #[arg(long, value_name = "PATH", requires = "image")]
    worker: Option<PathBuf>,
    /// How many neighbours.
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// Search DIR (written by `export`, npy or Parquet) instead of the table.
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
    /// Parallel scan segments when reading the table.
    #[arg(long, default_value_t = 4)]
    segments: u32,
    /// One JSON object per neighbour (`image_id`, `similarity`), instead of text lines.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("embatch-vectors: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let aws = AwsOptions::at(cli.endpoint_url, cli.region);
    let table = cli.table;
    let reader = || async {
        let table = table
            .clone()
            .context("no table: pass --table or set EMBATCH_TABLE")?;
        let config = client::load(&aws).await;
        anyhow::Ok(TableReader::new(client::dynamodb(&config), table))
    };
    match cli.command {
        Command::Get { ids, json } => get(&reader().await?, &ids, json).await,
        Command::Export(args) => {
            let reader = reader().await?;
            match args.format {
                Format::Npy => export_npy(&reader, args.segments, &args.out).await?,
                Format::Parquet => export_parquet(&reader, &aws, &args).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Index(args) => {
            let source = match &args.from_export {
                Some(dir) => {
                    stream::iter(read_records(dir)?.map(|r| r.map_err(Into::into))).boxed()
                }
                None => reader()
                    .await?
                    .scan(args.segments)
                    .map_err(Into::into)
                    .boxed(),
            };
            index(source, &aws, args).await
        }
        Command::Nearest(args) => {
            // The query image first: a refused image or a wrong model fails before a scan.
            let query = match &args.image {
                Some(image) => Some(query_image::embed(
                    args.worker.as_deref(),
                    args.model_spec.as_deref(),
                    image,
                )?),
                None => None,
            };
            let index = match &args.export {
                Some(dir) => Index::read_export(dir)?,
                None => {
                    let records = reader().await?.scan(args.segments).try_collect().await?;
                    Index::from_records(records)?
                }
            };
            let neighbours = match (&query, &args.id) {
                (Some(query), _) => {
                    query_image::check_model(&index, query)?;
                    index.nearest(&query.vector, args.k)
                }
                (None, Some(id)) => index.nearest_to(id, args.k),
                (None, None) => unreachable!("clap requires an id or --image"),
            };
            print_nearest(&index, neighbours, args.json)
        }
    }
}

/// `embatch-vectors export`.
#[derive(Args)]
struct ExportArgs {
    /// The output directory (created if missing), or with `--format parquet` an S3 prefix.
    #[arg(long)]
    out: String,
    /// The file format.
    #[arg(long, value_enum, default_value_t = Format::Npy)]
    format: Format,
    /// Parquet: rows per file (each file is one PutObject to S3).
    #[arg(long, default_value_t = ParquetOptions::default().rows_per_file)]
    rows_per_file: u64,
    /// Parquet: rows per row group (what the export holds in memory: about 2 KiB per 512-d row).
    #[arg(long, default_value_t = ParquetOptions::default().rows_per_group)]
    rows_per_group: usize,
    /// Parallel scan segments.
    #[arg(long, default_value_t = 4)]
    segments: u32,
}

/// `embatch-vectors index`.
#[derive(Args)]
struct IndexArgs {
    /// The vector bucket.
    #[arg(long)]
    vector_bucket: String,
    /// The index in it.
    #[arg(long)]
    index: String,
    /// Create the index if it is missing (dimension from the vectors, cosine, float32).
    #[arg(long)]
    create: bool,
    /// Read a Parquet export in DIR instead of the table.
    #[arg(long, value_name = "DIR")]
    from_export: Option<PathBuf>,
    /// Vectors per second, at most (an index takes 2,500).
    #[arg(long, default_value_t = vector_index::DEFAULT_RATE, value_parser = clap::value_parser!(u32).range(1..=2_500))]
    rate: u32,
    /// Parallel scan segments when reading the table.
    #[arg(long, default_value_t = 4)]
    segments: u32,
}

/// An export's file format.
#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// vectors.npy + ids.jsonl.
    Npy,
    /// Parquet files with every provenance column.
    Parquet,
}

async fn export_npy(reader: &TableReader, segments: u32, out: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !out.starts_with("s3://"),
        "--out {out}: the npy export writes to a local directory; use --format parquet for S3"
    );
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let done = export(reader, segments, &out).await?;
    eprintln!(
        "exported {} vectors of dimension {} from {} to {} and {}",
        done.rows,
        done.dimension,
        reader.table(),
        out.join(VECTORS_FILE).display(),
        out.join(IDS_FILE).display()
    );
    Ok(())
}

async fn export_parquet(
    reader: &TableReader,
    aws: &AwsOptions,
    args: &ExportArgs,
) -> anyhow::Result<()> {
    let options = ParquetOptions {
        rows_per_file: args.rows_per_file,
        rows_per_group: args.rows_per_group,
    };
    let s3 = async { client::s3(&client::load(aws).await) };
    let to = parquet_export::Destination::parse(&args.out, s3).await?;
    let done = parquet_export::export(reader, args.segments, &to, options).await?;
    eprintln!(
        "exported {} vectors of dimension {} from {} to {} files in {}",
        done.rows,
        done.dimension,
        reader.table(),
        done.files.len(),
        to.describe()
    );
    Ok(())
}

async fn index(
    source: BoxStream<'static, anyhow::Result<VectorRecord>>,
    aws: &AwsOptions,
    args: IndexArgs,
) -> anyhow::Result<ExitCode> {
    let target = vector_index::Target {
        client: aws_sdk_s3vectors::Client::new(&client::load(aws).await),
        bucket: args.vector_bucket,
        index: args.index,
    };
    let options = vector_index::LoadOptions {
        create: args.create,
        rate: args.rate,
    };
    let done = vector_index::load(source, &target, &options).await?;
    eprintln!(
        "index {} in vector bucket {}: {} read, {} written, {} already there, {} skipped",
        target.index,
        target.bucket,
        done.read,
        done.written,
        done.unchanged,
        done.skipped.len()
    );
    for (id, why) in &done.skipped {
        eprintln!("skipped {id:?}: {why}");
    }
    Ok(if done.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn get(reader: &TableReader, ids: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let fetched = reader.get(ids).await?;
    for record in &fetched.found {
        if json {
            println!("{}", to_json(record));
        } else {
            println!("{}", summary(record));
        }
    }
    for id in &fetched.missing {
        eprintln!("not found in {}: {id:?}", reader.table());
    }
    Ok(if fetched.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints the neighbours found, or says which ImageId is not there (exit 1).
fn print_nearest(
    index: &Index,
    neighbours: Result<Vec<Neighbour>, IndexError>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let neighbours = match neighbours {
        Ok(neighbours) => neighbours,
        Err(IndexError::UnknownId(id)) => {
            eprintln!("not found among {} vectors: {id:?}", index.len());
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    for n in neighbours {
        if json {
            println!(
                "{}",
                json!({"image_id": n.image_id, "similarity": n.similarity})
            );
        } else {
            println!("{:.6}  {}", n.similarity, n.image_id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `id  dimension  source  [first values ...]`
fn summary(record: &VectorRecord) -> String {
    let head: Vec<String> = record
        .vector
        .iter()
        .take(4)
        .map(|v| format!("{v:.6}"))
        .collect();
    let more = if record.vector.len() > 4 { ", ..." } else { "" };
    format!(
        "{}\t{}\t{}\t[{}{more}]",
        record.image_id,
        record.vector.len(),
        record.meta.source_uri.as_deref().unwrap_or("-"),
        head.join(", ")
    )
}

/// The item as JSON with the table's attribute names.
fn to_json(record: &VectorRecord) -> Value {
    let mut object = Map::new();
    object.insert(attr::IMAGE_ID.into(), json!(record.image_id));
    object.insert(attr::DIMENSION.into(), json!(record.vector.len()));
    object.insert(attr::DATA_TYPE.into(), json!(DATA_TYPE_F32));
    object.insert(attr::VECTOR.into(), json!(record.vector));
    for (name, value) in record.meta.attributes() {
        let value = match value {
            MetaValue::Text(v) => json!(v),
            MetaValue::Number(v) => json!(v),
        };
        object.insert(name.into(), value);
    }
    Value::Object(object)
}
