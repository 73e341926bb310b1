//! Image bytes to embedding vectors: the model loaded and run with tract, on tensors that
//! [`embatch_prepare`] makes (re-exported here: spec, decode, preprocess, limits). No AWS.
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
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

pub mod infer;
pub mod maxpool;
mod rewrite;
pub mod winograd;

pub use embatch_prepare::{
    decode, jpeg, limits, prepare, preprocess, spec, ChannelOrder, EmbeddingSelector, ImageError,
    InputSpec, Interpolation, Layout, Limits, ModelSpec, Prepared, PreprocessSpec, SpecError,
    BACKGROUND,
};
pub use infer::{Engine, EngineError, EngineOptions, NodeTime, PREFERRED_BATCH};
pub use winograd::ConvAlgorithm;
