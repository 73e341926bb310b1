//! Numerical parity with the Python reference (tests/reference/reference.py), on generated
//! images in every supported format and colour type:
//! - our vector vs onnxruntime on *our* preprocessed tensor: cosine >= 0.9999 (inference);
//! - our vector vs the full Python pipeline (PIL decode, numpy preprocessing, onnxruntime)
//!   on the same file: cosine >= 0.999 (decode + preprocess + inference);
//! - our preprocessed tensor vs PIL's with `draft()` at our scale: the same f32 values (decode
//!   and Pillow's resize arithmetic).

use crate::common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::cosine;
use embatch_engine::{Engine, Limits, Prepared};

struct Fixture {
    engine: Engine,
    spec_path: PathBuf,
    _dir: tempfile::TempDir,
    /// file name -> (path, description, prepared tensor, our vector)
    images: BTreeMap<String, (PathBuf, String, Prepared, Vec<f32>)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let spec_path = common::resnet18_spec_path();
        let engine = Engine::load(&common::resnet18()).expect("load the test model");
        let dir = tempfile::tempdir().unwrap();
        let mut images = BTreeMap::new();
        for (name, desc) in common::make_images(dir.path()) {
            let path = dir.path().join(&name);
            let bytes = std::fs::read(&path).unwrap();
            let prepared = engine
                .prepare(&bytes, &Limits::default())
                .unwrap_or_else(|e| panic!("{name} ({desc}): {e}"));
            let vector = engine
                .embed(std::slice::from_ref(&prepared))
                .unwrap()
                .remove(0);
            assert_eq!(vector.len(), 512, "{name}");
            images.insert(name, (path, desc, prepared, vector));
        }
        Fixture {
            engine,
            spec_path,
            _dir: dir,
            images,
        }
    })
}

fn read_vectors(path: &std::path::Path) -> Vec<Vec<f32>> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn inference_matches_onnxruntime_on_our_tensors() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let tensors = dir.path().join("tensors.f32");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tensors).unwrap());
    for (_, _, p, _) in f.images.values() {
        for v in &p.tensor {
            file.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    file.flush().unwrap();
    drop(file);
    let out = dir.path().join("out.json");
    let count = f.images.len().to_string();
    common::run_reference(
        "reference.py",
        &[
            OsStr::new("tensors"),
            f.spec_path.as_os_str(),
            tensors.as_os_str(),
            OsStr::new(&count),
            out.as_os_str(),
        ],
    );
    let theirs = read_vectors(&out);
    let mut worst = 1.0f64;
    for ((name, (_, desc, _, ours)), theirs) in f.images.iter().zip(&theirs) {
        let c = cosine(ours, theirs);
        worst = worst.min(c);
        assert!(
            c >= 0.9999,
            "{name} ({desc}): cosine {c} < 0.9999 vs onnxruntime"
        );
    }
    eprintln!(
        "tract vs onnxruntime on {} tensors: worst cosine {worst}",
        theirs.len()
    );
}

/// Runs `reference.py COMMAND SPEC OUT IMAGES... EXTRA...` on every fixture image and returns
/// what it wrote to OUT.
fn reference_on_images(command: &str, extra: &[&str]) -> Vec<u8> {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args: Vec<&OsStr> = vec![
        OsStr::new(command),
        f.spec_path.as_os_str(),
        out.as_os_str(),
    ];
    args.extend(f.images.values().map(|(p, ..)| p.as_os_str()));
    args.extend(extra.iter().map(OsStr::new));
    common::run_reference("reference.py", &args);
    std::fs::read(&out).unwrap()
}

#[test]
fn full_pipeline_matches_the_python_reference() {
    let f = fixture();
    let theirs: Vec<Vec<f32>> =
        serde_json::from_slice(&reference_on_images("images", &[])).unwrap();
    let mut report = Vec::new();
    for ((name, (_, desc, _, ours)), theirs) in f.images.iter().zip(&theirs) {
        let c = cosine(ours, theirs);
        report.push(format!("{c:.6} {name} ({desc})"));
        assert!(
            c >= 0.999,
            "{name} ({desc}): cosine {c} < 0.999 vs the Python pipeline"
        );
    }
    eprintln!("engine vs PIL+numpy+onnxruntime:\n{}", report.join("\n"));
}

#[test]
fn preprocessing_matches_pil_bit_for_bit() {
    // The reference decodes JPEGs with draft() at our margin, the scales we decode at, so
    // every value of every tensor must be the same f32: the resize is Pillow's arithmetic.
    let f = fixture();
    let theirs: Vec<f32> = reference_on_images("prepare", &["--draft"])
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let per_image = theirs.len() / f.images.len();
    // One 8-bit level in the tensor, in the channel where it is largest.
    let p = &common::resnet18().preprocess;
    let level = 1.0 / (p.scale * p.std.iter().cloned().fold(f32::INFINITY, f32::min));
    let mut differ = Vec::new();
    for ((name, (_, desc, ours, _)), theirs) in f.images.iter().zip(theirs.chunks(per_image)) {
        assert_eq!(ours.tensor.len(), per_image, "{name}");
        let diffs: Vec<f32> = ours
            .tensor
            .iter()
            .zip(theirs)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let largest = diffs.iter().cloned().fold(0.0, f32::max);
        // The one exception: PIL keeps only the high byte of a 16-bit RGB sample, we round
        // (as PIL's own grayscale path and the reference do), at most one level apart.
        if name == "png_rgb16.png" {
            assert!(largest <= level * 1.001, "{name}: {largest} > one level");
        } else if !diffs.is_empty() {
            differ.push(format!("{name} ({desc}): {} values differ", diffs.len()));
        }
    }
    assert!(
        differ.is_empty(),
        "tensors unlike PIL's:\n{}",
        differ.join("\n")
    );
}

#[test]
fn the_parity_bars_can_tell_images_apart() {
    // The bars above mean something only if different images give clearly different vectors.
    let f = fixture();
    let a = &f.images["jpeg_rgb_small.jpg"].3;
    let b = &f.images["png_rgb.png"].3;
    let c = &f.images["bmp_rgb.bmp"].3;
    for (x, y) in [(a, b), (a, c), (b, c)] {
        let cos = cosine(x, y);
        assert!(
            cos < 0.99,
            "distinct images have cosine {cos}: the test model does not discriminate"
        );
    }
}

#[test]
fn exif_orientations_all_give_the_upright_image() {
    // Compared on the preprocessed tensors (pixels), which show orientation far more than the
    // random-weight model's pooled vectors do.
    let f = fixture();
    let upright = &f.images["jpeg_exif_1.jpg"];
    assert_eq!(
        (upright.2.original_width, upright.2.original_height),
        (400, 300)
    );
    for o in 2..=8 {
        let img = &f.images[&format!("jpeg_exif_{o}.jpg")];
        let c = cosine(&img.2.tensor, &upright.2.tensor);
        assert!(
            c >= 0.99,
            "orientation {o}: tensor cosine {c} to the upright image"
        );
        assert_eq!(
            (img.2.original_width, img.2.original_height),
            (400, 300),
            "orientation {o}: size as displayed"
        );
    }
    // Control: the same stored pixels without the tag are a different picture.
    let stripped = &f.images["jpeg_exif_6_stripped.jpg"];
    let c = cosine(&stripped.2.tensor, &upright.2.tensor);
    assert!(
        c < 0.9,
        "ignoring the orientation should change the tensor (cosine {c})"
    );
    assert_eq!(
        (stripped.2.original_width, stripped.2.original_height),
        (300, 400)
    );
    // And the vectors differ by more than the parity bar allows.
    assert!(cosine(&stripped.3, &upright.3) < 0.999);
}

#[test]
fn large_jpegs_report_their_full_size() {
    let f = fixture();
    let big = &f.images["jpeg_large_eighth.jpg"].2;
    assert_eq!((big.original_width, big.original_height), (5000, 4200));
}

#[test]
fn embedding_a_batch_equals_embedding_one_by_one() {
    let f = fixture();
    let names = ["jpeg_rgb_small.jpg", "png_rgba.png", "gif_animated.gif"];
    let batch: Vec<Prepared> = names.iter().map(|n| f.images[*n].2.clone()).collect();
    let vectors = f.engine.embed(&batch).unwrap();
    assert_eq!(vectors.len(), 3);
    for (n, v) in names.iter().zip(&vectors) {
        assert!(cosine(v, &f.images[*n].3) > 0.999_999, "{n}");
    }
}
