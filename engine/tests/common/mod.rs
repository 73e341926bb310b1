//! Shared helpers for the engine's integration tests: the generated test model, generated
//! test images and the Python reference pipeline (all via the project's `.venv`).
#![allow(dead_code, unused_imports)] // each test binary uses a subset

use std::path::{Path, PathBuf};
use std::process::Command;

use embatch_engine::ModelSpec;
use embatch_testkit::{python, run_ok, test_model};

/// The generated ResNet18-architecture test model's spec.
pub fn resnet18() -> ModelSpec {
    let path = test_model::resnet18_spec().expect("generate the test model");
    ModelSpec::from_path(&path).expect("load the generated spec")
}

/// Path of the generated test model's spec file.
pub fn resnet18_spec_path() -> PathBuf {
    test_model::resnet18_spec().expect("generate the test model")
}

/// Runs a script from `tests/reference/` with the project's Python; panics with its stderr.
pub fn run_reference(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let py = python::interpreter().expect("python");
    let path = python::workspace_root()
        .join("tests/reference")
        .join(script);
    let out = run_ok(
        Command::new(&py).arg(&path).args(args),
        &path.display().to_string(),
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Writes the synthetic test images into `dir`; returns (file name, description) pairs.
pub fn make_images(dir: &Path) -> Vec<(String, String)> {
    let json = run_reference("make_images.py", &[dir.as_os_str()]);
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).expect("image list");
    map.into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
        .collect()
}

pub use embatch_testkit::cosine;
