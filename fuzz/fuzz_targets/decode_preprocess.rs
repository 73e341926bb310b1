//! Arbitrary bytes through the worker's image path: `embatch_prepare::prepare` (what
//! `Engine::prepare` runs, minus loading the model) = decode within `Limits`, then resize,
//! crop and normalise for the default model's spec. Must never panic; every error is fine.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use embatch_prepare::{Limits, ModelSpec};
use libfuzzer_sys::fuzz_target;

/// The default model's spec (the file is never opened: only its preprocessing is used).
const SPEC: &str = include_str!("../../models/resnet18-v2-7.toml");

/// Smaller than the worker's defaults (64 MiB, 100 Mpx) so that one iteration stays fast,
/// but through the same checks. 2 Mi pixels still reaches the JPEG reduced-scale decode
/// (a 1024x2048 JPEG is decoded at 1/2 scale for a 256 px resize).
const LIMITS: Limits = Limits {
    max_encoded_bytes: 1 << 20,
    max_pixels: 1 << 21,
    max_scans: Limits::DEFAULT_MAX_SCANS,
};

fn spec() -> &'static ModelSpec {
    static SPEC_: OnceLock<ModelSpec> = OnceLock::new();
    SPEC_.get_or_init(|| ModelSpec::from_toml(SPEC, Path::new(".")).expect("the default spec"))
}

fuzz_target!(|data: &[u8]| {
    let spec = spec();
    match embatch_prepare::prepare(data, spec, &LIMITS) {
        Ok(prepared) => {
            // What `Engine::embed` needs, and what the worker records about the image.
            let (w, h) = (spec.input.width as usize, spec.input.height as usize);
            assert_eq!(prepared.tensor.len(), 3 * w * h);
            assert!(prepared.tensor.iter().all(|v| v.is_finite()));
            let (ow, oh) = (prepared.original_width, prepared.original_height);
            assert!(ow > 0 && oh > 0);
            assert!(u64::from(ow) * u64::from(oh) <= LIMITS.max_pixels);
        }
        Err(error) => {
            // The worker formats the error and its kind into the failure report.
            assert!(!error.kind().is_empty());
            assert!(!error.to_string().is_empty());
        }
    }
});
