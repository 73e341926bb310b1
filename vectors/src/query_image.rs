//! `embatch-vectors nearest --image FILE`: the query image is embedded by
//! `embatch-worker embed`, the worker's own engine, so that this reader compiles neither
//! tract nor an image decoder; its model must be the one that computed the stored vectors.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use embatch_records::nearest::Index;
use serde_json::Value;

/// The worker binary's name, looked for beside this program and then on `PATH`.
const WORKER: &str = "embatch-worker";

/// A query image's vector and the model that computed it.
#[derive(Debug)]
pub struct Query {
    /// The embedding.
    pub vector: Vec<f32>,
    /// The model's name (from its spec).
    pub model: String,
    /// The model file's sha256.
    pub model_sha256: String,
}

/// Embeds `image` with `embatch-worker embed` (`worker`, default: beside this program, else
/// on `PATH`), with `model_spec` or the worker's default spec.
pub fn embed(
    worker: Option<&Path>,
    model_spec: Option<&Path>,
    image: &Path,
) -> anyhow::Result<Query> {
    let worker = worker.map_or_else(default_worker, Path::to_path_buf);
    let mut command = Command::new(&worker);
    command.arg("embed").arg(image);
    if let Some(spec) = model_spec {
        command.arg("--model-spec").arg(spec);
    }
    let output = command.output().with_context(|| {
        format!(
            "cannot run {} to embed {}: --image needs the worker binary, which holds the \
             model engine (pass --worker PATH)",
            worker.display(),
            image.display()
        )
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().next() else {
        bail!(
            "{} embed {} failed ({}): {}",
            worker.display(),
            image.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    };
    parse(line).with_context(|| format!("query image {}", image.display()))
}

/// `embatch-worker` beside the running program if it is there, else the bare name (`PATH`).
fn default_worker() -> PathBuf {
    std::env::current_exe()
        .map(|exe| exe.with_file_name(WORKER))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(WORKER))
}

/// One line of `embatch-worker embed`'s output.
fn parse(line: &str) -> anyhow::Result<Query> {
    let value: Value = serde_json::from_str(line).context("unreadable output of the worker")?;
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    if let Some(kind) = text("error") {
        bail!("refused ({kind}): {}", text("reason").unwrap_or_default());
    }
    let vector = value
        .get("vector")
        .and_then(Value::as_array)
        .context("the worker's output has no vector")?
        .iter()
        // The worker writes non-finite values as null.
        .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
        .collect();
    Ok(Query {
        vector,
        model: text("model").unwrap_or_default(),
        model_sha256: text("model_sha256").context("the worker's output has no model_sha256")?,
    })
}

/// Refuses a query whose model did not compute the index's vectors (their similarities would
/// mean nothing); an index whose records carry no model (an npy export) is let through with
/// a note.
pub fn check_model(index: &Index, query: &Query) -> anyhow::Result<()> {
    let models = index.models();
    if models.is_empty() {
        eprintln!(
            "note: these vectors do not say which model computed them (an npy export or items \
             of the original sample); the query was embedded by {} (sha256 {})",
            query.model, query.model_sha256
        );
    } else if !models.contains(&query.model_sha256) {
        let stored: Vec<&str> = models.iter().map(String::as_str).collect();
        bail!(
            "the query image was embedded by {} (sha256 {}), but the vectors were computed by \
             the model with sha256 {}: pass that model's spec with --model-spec",
            query.model,
            query.model_sha256,
            stored.join(", ")
        );
    } else if models.len() > 1 {
        eprintln!(
            "warning: the vectors come from {} models; only those of {} (sha256 {}) are \
             comparable with the query",
            models.len(),
            query.model,
            query.model_sha256
        );
    }
    Ok(())
}
