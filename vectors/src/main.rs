//! `embatch-vectors`: read embatch's vector table.
//!
//! ```text
//! embatch-vectors --table T get ID... [--json]    vectors by id (JSON Lines with --json)
//! embatch-vectors --table T export --out DIR      DIR/vectors.npy (float32 [N, D]) + DIR/ids.jsonl
//! embatch-vectors --table T nearest ID [-k 10]    the K most similar vectors (exact cosine)
//! embatch-vectors nearest ID --export DIR         the same over an export
//! ```
//! Exit status: 0 on success, 1 if `get` or `nearest` found no item for some id, 2 on errors.
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use embatch_aws::client::{self, AwsOptions};
use embatch_formats::run::env;
use embatch_records::export::{export, IDS_FILE, VECTORS_FILE};
use embatch_records::nearest::{Index, IndexError};
use embatch_records::reader::TableReader;
use embatch_records::vector::{attr, VectorRecord, DATA_TYPE_F32};
use futures::TryStreamExt;
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
    /// Write the whole table to DIR/vectors.npy and DIR/ids.jsonl (line i = row i's id).
    Export {
        /// The output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Parallel scan segments.
        #[arg(long, default_value_t = 4)]
        segments: u32,
    },
    /// The K vectors most similar to ID's (exact cosine similarity, all cores), read from the
    /// table (a whole scan) or from an export directory.
    Nearest {
        /// The ImageId whose neighbours are wanted.
        id: String,
        /// How many neighbours.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Search DIR (written by `export`) instead of the table.
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        /// Parallel scan segments when reading the table.
        #[arg(long, default_value_t = 4)]
        segments: u32,
        /// One JSON object per neighbour (`image_id`, `similarity`), instead of text lines.
        #[arg(long)]
        json: bool,
    },
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
    let options = AwsOptions {
        endpoint_url: cli.endpoint_url,
        region: cli.region,
        ..AwsOptions::default()
    };
    let table = cli.table;
    let reader = || async {
        let table = table
            .clone()
            .context("no table: pass --table or set EMBATCH_TABLE")?;
        let config = client::load(&options).await;
        anyhow::Ok(TableReader::new(client::dynamodb(&config), table))
    };
    match cli.command {
        Command::Get { ids, json } => get(&reader().await?, &ids, json).await,
        Command::Export { out, segments } => {
            let reader = reader().await?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let done = export(&reader, segments, &out).await?;
            eprintln!(
                "exported {} vectors of dimension {} from {} to {} and {}",
                done.rows,
                done.dimension,
                reader.table(),
                out.join(VECTORS_FILE).display(),
                out.join(IDS_FILE).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Nearest {
            id,
            k,
            export,
            segments,
            json,
        } => {
            let index = match export {
                Some(dir) => Index::read_export(&dir)?,
                None => {
                    let records = reader().await?.scan(segments).try_collect().await?;
                    Index::from_records(records)?
                }
            };
            nearest(&index, &id, k, json)
        }
    }
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

fn nearest(index: &Index, id: &str, k: usize, json: bool) -> anyhow::Result<ExitCode> {
    let neighbours = match index.nearest_to(id, k) {
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
    let mut put = |name: &str, value: Value| {
        if !value.is_null() {
            object.insert(name.to_string(), value);
        }
    };
    let m = &record.meta;
    put(attr::IMAGE_ID, json!(record.image_id));
    put(attr::DIMENSION, json!(record.vector.len()));
    put(attr::DATA_TYPE, json!(DATA_TYPE_F32));
    put(attr::VECTOR, json!(record.vector));
    put(attr::CREATED, json!(m.created));
    put(attr::SOURCE_URI, json!(m.source_uri));
    put(attr::SOURCE_ETAG, json!(m.source_etag));
    put(attr::SOURCE_SIZE, json!(m.source_size));
    put(attr::WIDTH, json!(m.width));
    put(attr::HEIGHT, json!(m.height));
    put(attr::MODEL, json!(m.model));
    put(attr::MODEL_SHA256, json!(m.model_sha256));
    put(attr::RUN_ID, json!(m.run_id));
    put(attr::JOB_ID, json!(m.job_id));
    put(attr::MANIFEST, json!(m.manifest));
    Value::Object(object)
}
