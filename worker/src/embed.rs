//! `embatch-worker embed FILE...`: local image files through the worker's own engine (the same
//! decode, preprocess and model as a run), one JSON line per file on stdout. This is how
//! `embatch-vectors nearest --image` embeds its query without the reader compiling tract.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Parser;
use embatch_engine::{Engine, Limits, ModelSpec};
use embatch_formats::run::{env, exit};
use rayon::prelude::*;
use serde_json::json;

use embatch_worker::config::DEFAULT_MODEL_SPEC;

/// Embeds local image files with the model of a spec, as a run would, and prints one JSON
/// object per file: `{"file", "model", "model_sha256", "dimension", "vector"}` (non-finite
/// values as null), or `{"file", "error", "reason"}` for a file that is refused.
///
/// Exit codes: 0 every file embedded, 1 some refused (their lines say why), 2 the model or
/// the flags are wrong.
#[derive(Debug, Parser)]
#[command(name = "embatch-worker embed", version)]
pub struct EmbedArgs {
    /// Image files to embed.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The model spec (TOML); the model's sha256 is verified before any work.
    #[arg(long, env = env::MODEL_SPEC, default_value = DEFAULT_MODEL_SPEC)]
    model_spec: PathBuf,
}

/// Runs `embatch-worker embed` with `args` (the first being the command's name) and returns
/// the exit code.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let args = EmbedArgs::parse_from(args);
    let engine = match ModelSpec::from_path(&args.model_spec)
        .map_err(|e| e.to_string())
        .and_then(|spec| Engine::load(&spec).map_err(|e| e.to_string()))
    {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("embatch-worker embed: {}: {e}", args.model_spec.display());
            return exit::PERMANENT;
        }
    };
    let lines: Vec<(String, bool)> = args
        .files
        .par_iter()
        .map(|file| line(&engine, file))
        .collect();
    let mut stdout = std::io::stdout().lock();
    for (line, _) in &lines {
        if writeln!(stdout, "{line}").is_err() {
            return exit::PERMANENT;
        }
    }
    if lines.iter().all(|(_, embedded)| *embedded) {
        0
    } else {
        1
    }
}

/// The JSON line of one file, and whether it was embedded.
fn line(engine: &Engine, file: &Path) -> (String, bool) {
    match embed(engine, file) {
        Ok(vector) => {
            let spec = engine.spec();
            let line = json!({
                "file": file,
                "model": spec.name,
                "model_sha256": spec.sha256,
                "dimension": vector.len(),
                "vector": vector,
            });
            (line.to_string(), true)
        }
        Err((kind, reason)) => {
            let line = json!({"file": file, "error": kind, "reason": reason});
            (line.to_string(), false)
        }
    }
}

/// One file's vector, or `(kind, reason)` as a run would record the failure.
fn embed(engine: &Engine, file: &Path) -> Result<Vec<f32>, (&'static str, String)> {
    let limits = Limits::default();
    let mut bytes = Vec::new();
    File::open(file)
        // One byte past the limit is enough for `prepare` to refuse the file as too large.
        .and_then(|f| f.take(limits.max_encoded_bytes + 1).read_to_end(&mut bytes))
        .map_err(|e| ("read", e.to_string()))?;
    let prepared = engine
        .prepare(&bytes, &limits)
        .map_err(|e| (e.kind(), e.to_string()))?;
    let mut vectors = engine
        .embed(std::slice::from_ref(&prepared))
        .map_err(|e| ("inference", e.to_string()))?;
    Ok(vectors.remove(0))
}
