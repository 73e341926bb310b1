//! Spec loading errors, model verification (sha256, dimension, input, embedding selection),
//! and the specs shipped in models/.

use crate::common;

use std::path::{Path, PathBuf};

use embatch_engine::{
    EmbeddingSelector, Engine, EngineError, Interpolation, Limits, ModelSpec, SpecError,
};
use embatch_testkit::python::workspace_root;

/// The generated spec's text with `file` made absolute, so edited copies can live anywhere.
fn spec_text() -> String {
    let path = common::resnet18_spec_path();
    let model = path.parent().unwrap().join("resnet18-test.onnx");
    std::fs::read_to_string(&path).unwrap().replace(
        "file = \"resnet18-test.onnx\"",
        &format!("file = {:?}", model.display().to_string()),
    )
}

fn write_spec(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load_edited(from: &str, to: &str) -> Result<Engine, EngineError> {
    let text = spec_text();
    assert!(text.contains(from), "test setup: {from:?} not in the spec");
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::from_path(&write_spec(dir.path(), &text.replacen(from, to, 1))).unwrap();
    Engine::load(&spec)
}

#[test]
fn missing_spec_file() {
    let err = ModelSpec::from_path(Path::new("/nonexistent/spec.toml")).unwrap_err();
    assert!(matches!(err, SpecError::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/spec.toml"));
}

#[test]
fn missing_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for field in ["sha256", "dimension", "resize_shorter_to", "mean"] {
        let text: String = spec_text()
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = write_spec(dir.path(), &text);
        let err = ModelSpec::from_path(&path).unwrap_err();
        assert!(matches!(err, SpecError::Parse { .. }), "{field}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(field) && msg.contains("spec.toml"),
            "{field}: {msg}"
        );
    }
}

#[test]
fn malformed_specs() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // (edit, expected error variant is Parse?)
        (("[input]", "[input"), true), // not TOML
        (("layout = \"nchw\"", "layout = \"nchw\"\ncolour = 1"), true), // unknown field
        (
            ("interpolation = \"bilinear\"", "interpolation = \"cubic\""),
            true,
        ), // bad enum
        (
            (
                "select = \"input_of_last_gemm\"",
                "select = \"the_good_one\"",
            ),
            false,
        ),
        (
            (
                "select = \"input_of_last_gemm\"",
                "select = \"input_of_last_gemm\"\nnode = \"x\"",
            ),
            false,
        ),
        (("crop_width = 224", "crop_width = 200"), false),
        (
            ("resize_shorter_to = 256", "resize_shorter_to = 100"),
            false,
        ),
        (
            ("std = [0.229, 0.224, 0.225]", "std = [0.229, 0.0, 0.225]"),
            false,
        ),
        (("dimension = 512", "dimension = 0"), false),
    ];
    for ((from, to), is_parse) in cases {
        let text = spec_text();
        assert!(text.contains(from), "test setup: {from:?}");
        let path = write_spec(dir.path(), &text.replacen(from, to, 1));
        let err = ModelSpec::from_path(&path).unwrap_err();
        if is_parse {
            assert!(matches!(err, SpecError::Parse { .. }), "{to}: {err}");
        } else {
            assert!(matches!(err, SpecError::Invalid { .. }), "{to}: {err}");
        }
    }
    // A sha256 that is not 64 hex digits.
    let text = spec_text();
    let sha_line = text.lines().find(|l| l.starts_with("sha256 =")).unwrap();
    let path = write_spec(dir.path(), &text.replace(sha_line, "sha256 = \"abc\""));
    assert!(matches!(
        ModelSpec::from_path(&path),
        Err(SpecError::Invalid { .. })
    ));
}

#[test]
fn relative_model_file_resolves_against_the_spec_directory() {
    let dir = tempfile::tempdir().unwrap();
    let text = spec_text();
    let file_line = text.lines().find(|l| l.starts_with("file =")).unwrap();
    let spec_path = write_spec(
        dir.path(),
        &text.replace(file_line, "file = \"sub/m.onnx\""),
    );
    let spec = ModelSpec::from_path(&spec_path).unwrap();
    assert_eq!(spec.file, dir.path().join("sub/m.onnx"));
    assert_eq!(
        spec.clone().with_file("/x.onnx").file,
        PathBuf::from("/x.onnx")
    );
}

#[test]
fn sha_mismatch_is_refused_naming_both_hashes_and_the_file() {
    let spec = common::resnet18();
    let wrong = "0".repeat(64);
    let tampered = ModelSpec {
        sha256: wrong.clone(),
        ..spec.clone()
    };
    let err = Engine::load(&tampered).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::ShaMismatch { .. }), "{msg}");
    assert!(msg.contains(&wrong) && msg.contains(&spec.sha256), "{msg}");
    assert!(msg.contains(&spec.file.display().to_string()), "{msg}");

    // A modified model file with the original spec.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("m.onnx");
    let mut bytes = std::fs::read(&spec.file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let err = Engine::load(&spec.clone().with_file(&copy)).unwrap_err();
    assert!(matches!(err, EngineError::ShaMismatch { .. }), "{err}");
}

#[test]
fn missing_or_invalid_model_file() {
    let spec = common::resnet18();
    let err = Engine::load(&spec.clone().with_file("/nonexistent/m.onnx")).unwrap_err();
    assert!(matches!(err, EngineError::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/m.onnx"));

    // Not ONNX, but with a matching sha256: the loader itself must refuse it.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"<html>this is not a model</html>").unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&junk).unwrap()))
    };
    let spec = ModelSpec {
        sha256: sha,
        ..spec.with_file(&junk)
    };
    let err = Engine::load(&spec).unwrap_err();
    assert!(matches!(err, EngineError::Model { .. }), "{err}");
}

#[test]
fn dimension_mismatch_between_spec_and_model() {
    let err = load_edited("dimension = 512", "dimension = 1000").unwrap_err();
    match &err {
        EngineError::DimensionMismatch { spec, model, .. } => {
            assert_eq!((*spec, *model), (1000, 512))
        }
        other => panic!("expected DimensionMismatch, got {other}"),
    }
    // The classifier output selected by name has 1000 values, not 512.
    let err = load_edited(
        "select = \"input_of_last_gemm\"",
        "output = \"resnetv22_dense0_fwd\"",
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::DimensionMismatch {
                spec: 512,
                model: 1000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_input_name_or_unknown_node() {
    let err = load_edited("name = \"data\"", "name = \"images\"").unwrap_err();
    assert!(matches!(err, EngineError::Model { .. }), "{err}");
    assert!(err.to_string().contains("images"), "{err}");
    let err =
        load_edited("select = \"input_of_last_gemm\"", "node = \"no_such_node\"").unwrap_err();
    assert!(
        matches!(err, EngineError::EmbeddingNotFound { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_node"), "{err}");
}

#[test]
fn structural_and_named_selectors_find_the_same_embedding() {
    let by_gemm = Engine::load(&common::resnet18()).unwrap();
    assert_eq!(by_gemm.embedding_tensor(), "flatten_170");
    let by_pool = load_edited(
        "select = \"input_of_last_gemm\"",
        "select = \"output_of_last_global_average_pool\"",
    )
    .unwrap();
    assert_eq!(by_pool.embedding_tensor(), "resnetv22_pool1_fwd");
    let by_node = load_edited(
        "select = \"input_of_last_gemm\"",
        "node = \"resnetv22_pool1_fwd\"",
    )
    .unwrap();

    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([x as u8, y as u8, (x + y) as u8])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let p = by_gemm.prepare(png.get_ref(), &Limits::default()).unwrap();
    let a = &by_gemm.embed(std::slice::from_ref(&p)).unwrap()[0];
    for other in [&by_pool, &by_node] {
        let b = &other.embed(std::slice::from_ref(&p)).unwrap()[0];
        assert!(common::cosine(a, b) > 0.999_999);
    }
}

#[test]
fn shipped_specs_parse_with_the_documented_facts() {
    let models = workspace_root().join("models");
    let v2 = ModelSpec::from_path(&models.join("resnet18-v2-7.toml")).unwrap();
    assert_eq!(
        v2.sha256,
        "3b4d048057854022232aa20bf68262e31718ab7119a17f920b8a2dc1433f824b"
    );
    assert_eq!(v2.file, models.join("resnet18-v2-7.onnx"));
    assert_eq!(
        (v2.input.name.as_str(), v2.input.width, v2.input.height),
        ("data", 224, 224)
    );
    assert_eq!(v2.preprocess.resize_shorter_to, 256);
    assert_eq!(v2.preprocess.interpolation, Interpolation::Bilinear);
    assert_eq!(v2.embedding, EmbeddingSelector::InputOfLastGemm);
    assert_eq!(v2.dimension, 512);

    let v1 = ModelSpec::from_path(&models.join("resnet18-v1-7.toml")).unwrap();
    assert_eq!(
        v1.sha256,
        "4e8f8653e7a2222b3904cc3fe8e304cd8b339ce1d05fd24688162f86fb6df52c"
    );
    assert_eq!(v1.dimension, 512);

    let m = ModelSpec::from_path(&models.join("mobilenetv2-features.toml")).unwrap();
    assert_eq!(m.input.name, "input");
    assert_eq!(m.embedding, EmbeddingSelector::Output("features".into()));
    assert_eq!(m.dimension, 1280);
}
