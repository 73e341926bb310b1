//! The generated test model: a ResNet18 v2 architecture ONNX with deterministic random weights,
//! made by `models/testgen/make_resnet18.py` (Python `onnx` + numpy from the project's `.venv`).
//!
//! Tests and the local run never download a model. [`resnet18_spec`] generates the model once
//! per generator version into `<workspace>/target/test-models/` and returns its spec path.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::python;

/// The generator script, relative to the workspace root.
const GENERATOR: &str = "models/testgen/make_resnet18.py";
/// The generator's source: its hash names the cache directory, so editing the script
/// regenerates the model instead of reusing a stale one.
const GENERATOR_SOURCE: &str = include_str!("../../models/testgen/make_resnet18.py");
/// The spec file the generator writes next to the model.
const SPEC_NAME: &str = "resnet18-test.toml";

/// Path of the test model's spec (TOML), generating model and spec on first use.
///
/// Safe to call from many test processes at once: each generates into its own temporary
/// directory and renames it into place; the first rename wins and the others discard theirs.
/// The cached path costs one `stat`.
pub fn resnet18_spec() -> anyhow::Result<PathBuf> {
    let root = python::workspace_root().join("target/test-models");
    let dir = root.join(format!("resnet18-{:016x}", generator_hash()));
    let spec = dir.join(SPEC_NAME);
    if spec.is_file() {
        return Ok(spec);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".gen-resnet18-")
        .tempdir_in(&root)
        .with_context(|| format!("creating a temporary directory in {}", root.display()))?;
    let python = python::interpreter()?;
    let script = python::workspace_root().join(GENERATOR);
    let out = Command::new(&python)
        .arg(&script)
        .arg(tmp.path())
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let generated = tmp.keep();
    // A concurrent caller may have renamed its copy into place first: then ours is redundant.
    if std::fs::rename(&generated, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&generated);
    }
    anyhow::ensure!(
        spec.is_file(),
        "the test model generator did not produce {}",
        spec.display()
    );
    Ok(spec)
}

fn generator_hash() -> u64 {
    // DefaultHasher with fixed keys is deterministic for one toolchain: enough for a cache key.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    GENERATOR_SOURCE.hash(&mut h);
    h.finish()
}
