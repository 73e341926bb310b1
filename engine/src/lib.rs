//! Image bytes to embedding vectors: model spec, decode, preprocess, tract inference. No AWS.
//!
//! The path of one image: [`spec`] (what the model needs) → [`decode`] (bytes to upright RGB,
//! within [`Limits`]) → [`preprocess`] (resize, crop, normalise into a [`Prepared`] tensor) →
//! [`infer`] ([`Engine::embed`], tract).
//!
//! ```no_run
//! use embatch_engine::{Engine, Limits, ModelSpec};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = ModelSpec::from_path("models/resnet18-v2-7.toml".as_ref())?;
//! let engine = Engine::load(&spec)?; // verifies sha256, optimises, checks the dimension
//! let bytes = std::fs::read("photo.jpg")?;
//! let prepared = engine.prepare(&bytes, &Limits::default())?;
//! let vectors = engine.embed(&[prepared])?;
//! assert_eq!(vectors[0].len(), engine.dimension());
//! # Ok(()) }
//! ```

pub mod decode;
pub mod infer;
pub mod jpeg;
pub mod limits;
pub mod preprocess;
pub mod spec;

pub use decode::{ImageError, BACKGROUND};
pub use infer::{Engine, EngineError, EngineOptions, PREFERRED_BATCH};
pub use limits::Limits;
pub use preprocess::Prepared;
pub use spec::{
    ChannelOrder, EmbeddingSelector, InputSpec, Interpolation, Layout, ModelSpec, PreprocessSpec,
    SpecError,
};

/// Decodes and preprocesses one encoded image for the model `spec` describes, without loading
/// the model: the whole of [`Engine::prepare`] (which calls this with its own spec). For tools
/// and fuzzing that need the worker's image path but not inference.
pub fn prepare(bytes: &[u8], spec: &ModelSpec, limits: &Limits) -> Result<Prepared, ImageError> {
    let min_side = spec
        .preprocess
        .resize_shorter_to
        .saturating_mul(decode::DCT_SCALE_MARGIN);
    let decoded = decode::decode(bytes, limits, min_side)?;
    let prepared = preprocess::preprocess(
        &decoded.rgb,
        spec,
        (decoded.original_width, decoded.original_height),
    );
    decode::recycle(decoded.rgb);
    prepared
}
