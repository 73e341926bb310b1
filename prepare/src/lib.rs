//! Image bytes to a model's input tensor: the model spec, decode, preprocess. No model, no
//! inference, no AWS: what the worker's decode threads run, and what the decode fuzz target
//! compiles (without tract).
//!
//! The path of one image: [`spec`] (what the model needs) → [`decode`] (bytes to upright RGB,
//! within [`Limits`]; JPEG through libjpeg-turbo, [`jpeg`]) → [`preprocess`] (resize, crop,
//! normalise into a [`Prepared`] tensor). `embatch-engine` runs the model on it.
//!
//! ```no_run
//! use embatch_prepare::{prepare, Limits, ModelSpec};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = ModelSpec::from_path("models/resnet18-v2-7.toml".as_ref())?;
//! let prepared = prepare(&std::fs::read("photo.jpg")?, &spec, &Limits::default())?;
//! assert_eq!(prepared.tensor.len(), 3 * 224 * 224);
//! # Ok(()) }
//! ```
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

pub mod decode;
pub mod jpeg;
pub mod limits;
mod png;
pub mod preprocess;
mod resample;
pub use embatch_formats::spec;

pub use decode::{ImageError, BACKGROUND};
pub use limits::Limits;
pub use preprocess::Prepared;
pub use spec::{
    ChannelOrder, EmbeddingSelector, InputSpec, Interpolation, Layout, ModelFileError, ModelSpec,
    PreprocessSpec, SpecError,
};

/// Decodes and preprocesses one encoded image for the model `spec` describes: the whole of
/// `embatch_engine::Engine::prepare` (which calls this with its own spec). Pure CPU work on the
/// calling thread, which keeps its decode buffers for the next image.
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
