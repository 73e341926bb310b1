//! `models/fetch`: the sha256 verification path, on local files (no network in tests).

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use embatch_testkit::python;

fn fetch(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(python::interpreter().unwrap())
        .arg(python::workspace_root().join("models/fetch"))
        .args(args)
        .output()
        .unwrap()
}

/// A copy of the generated spec in `dir` whose model file is `dir/model.onnx`, with the given
/// source URL.
fn spec_in(dir: &Path, source_url: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::resnet18_spec_path()).unwrap();
    let text = text
        .replace("file = \"resnet18-test.onnx\"", "file = \"model.onnx\"")
        .lines()
        .map(|l| {
            if l.starts_with("source_url =") {
                format!("source_url = {source_url:?}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect::<String>();
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn from_a_good_file_installs_the_model() {
    let spec = common::resnet18();
    let dir = tempfile::tempdir().unwrap();
    let spec_path = spec_in(dir.path(), "https://example.invalid/never-used");
    let out = fetch(&[
        "--from-file".as_ref(),
        spec.file.as_os_str(),
        spec_path.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = dir.path().join("model.onnx");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&spec.file).unwrap()
    );
    let out = fetch(&["--check".as_ref(), spec_path.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_file_url_is_downloaded_and_verified() {
    let spec = common::resnet18();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", spec.file.display());
    let spec_path = spec_in(dir.path(), &url);
    let out = fetch(&[spec_path.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("model.onnx").is_file());
}

#[test]
fn a_mismatching_file_is_refused_and_not_installed() {
    let spec = common::resnet18();
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("tampered.onnx");
    let mut bytes = std::fs::read(&spec.file).unwrap();
    bytes[1000] ^= 0xFF;
    std::fs::write(&tampered, &bytes).unwrap();
    let spec_path = spec_in(dir.path(), "https://example.invalid/never-used");
    let out = fetch(&[
        "--from-file".as_ref(),
        tampered.as_os_str(),
        spec_path.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&spec.sha256), "names the expected hash: {err}");
    assert!(err.contains("tampered.onnx"), "names the source: {err}");
    assert!(!dir.path().join("model.onnx").exists(), "nothing installed");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".fetch-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary file removed");
    // And --check on a wrong file in place fails too.
    std::fs::copy(&tampered, dir.path().join("model.onnx")).unwrap();
    let out = fetch(&["--check".as_ref(), spec_path.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
}
