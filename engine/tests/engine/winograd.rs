//! Winograd convolutions against tract's own plan on the whole generated ResNet18 (every 3×3
//! stride-1 convolution replaced): the same images, batch 1 and 8, cosine >= 0.99999 per image.
//! Against onnxruntime, `parity` covers the default plan (`auto`, Winograd).

use crate::common;

use common::cosine;
use embatch_engine::{ConvAlgorithm, Engine, EngineOptions, Limits, Prepared};

/// Prepared tensors of eight generated test images (one batch of 8).
fn prepared(engine: &Engine) -> Vec<Prepared> {
    let dir = tempfile::tempdir().unwrap();
    common::make_images(dir.path())
        .into_iter()
        .filter_map(|(name, _)| {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            engine.prepare(&bytes, &Limits::default()).ok()
        })
        .take(8)
        .collect()
}

#[test]
fn winograd_plans_match_tracts_plan_at_batch_1_and_8() {
    let spec = common::resnet18();
    let images = prepared(&Engine::load(&spec).unwrap());
    assert_eq!(images.len(), 8, "test images");
    for batch in [1, 8] {
        let load = |conv| Engine::load_with(&spec, EngineOptions { batch, conv }).unwrap();
        let reference = load(ConvAlgorithm::Im2col);
        let expected = reference.embed(&images).unwrap();
        for conv in [ConvAlgorithm::Auto, ConvAlgorithm::F2, ConvAlgorithm::F4] {
            let got = load(conv).embed(&images).unwrap();
            assert_eq!(got.len(), expected.len());
            let mut max_diff = 0f32;
            for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
                let cos = cosine(a, b);
                assert!(
                    cos >= 0.99999,
                    "batch {batch}, {conv}, image {i}: cosine {cos}"
                );
                let diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                max_diff = max_diff.max(diff);
            }
            eprintln!(
                "batch {batch}, {conv}: {} images, max |difference| {max_diff:.2e}",
                got.len()
            );
        }
    }
}
