//! The model spec: a small TOML file next to an ONNX model saying where the model comes from,
//! how to feed it and which tensor is the embedding. Nothing model-specific is hard-coded
//! elsewhere in the engine.
//!
//! ```toml
//! name = "resnet18-v2-7"
//! source_url = "https://github.com/onnx/models/raw/main/validated/vision/classification/resnet/model/resnet18-v2-7.onnx"
//! sha256 = "3b4d048057854022232aa20bf68262e31718ab7119a17f920b8a2dc1433f824b"
//! file = "resnet18-v2-7.onnx"          # relative to the spec file's directory
//!
//! [input]
//! name = "data"
//! width = 224
//! height = 224
//! channel_order = "rgb"                # or "bgr"
//! layout = "nchw"                      # or "nhwc"
//!
//! [preprocess]
//! resize_shorter_to = 256
//! crop_width = 224
//! crop_height = 224
//! interpolation = "bilinear"           # antialiased: "nearest", "bilinear", "bicubic", "lanczos3"
//! scale = 255.0                        # pixel / scale, then (x - mean) / std
//! mean = [0.485, 0.456, 0.406]
//! std = [0.229, 0.224, 0.225]
//!
//! [embedding]
//! select = "input_of_last_gemm"        # or: node = "name" | output = "tensor name" |
//!                                      #     select = "output_of_last_global_average_pool"
//! dimension = 512
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a spec file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read model spec {path}: {source}")]
    Io {
        /// The spec file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or misses/misnames a field.
    #[error("invalid model spec {path}: {message}")]
    Parse {
        /// The spec file.
        path: PathBuf,
        /// What the parser reported (names the field and line).
        message: String,
    },
    /// The fields parse but are inconsistent or out of range.
    #[error("invalid model spec {path}: {reason}")]
    Invalid {
        /// The spec file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
}

/// Memory layout of the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Batch, channel, height, width.
    Nchw,
    /// Batch, height, width, channel.
    Nhwc,
}

/// Resampling filter for the shorter-side resize. All are antialiased when downscaling
/// (the filter support grows with the scale factor), as in Pillow's `resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Nearest neighbour (no antialiasing).
    Nearest,
    /// Triangle filter, Pillow's `BILINEAR`.
    Bilinear,
    /// Catmull-Rom (a = -0.5), Pillow's `BICUBIC`.
    Bicubic,
    /// Lanczos, 3 lobes, Pillow's `LANCZOS`.
    Lanczos3,
}

/// The model's input tensor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the graph input.
    pub name: String,
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// Channel order.
    pub channel_order: ChannelOrder,
    /// Tensor layout.
    pub layout: Layout,
}

/// Preprocessing: resize the shorter side, centre crop, scale, normalise.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// The shorter image side is resized to this many pixels (aspect ratio kept).
    pub resize_shorter_to: u32,
    /// Width of the centre crop taken from the resized image.
    pub crop_width: u32,
    /// Height of the centre crop taken from the resized image.
    pub crop_height: u32,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Pixel values (0..=255) are divided by this (255 maps them to [0, 1]).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling, in R, G, B order.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after the mean, in R, G, B order.
    pub std: [f32; 3],
}

/// Which tensor of the graph is the embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingSelector {
    /// A tensor (value) by its name in the ONNX graph.
    Output(String),
    /// The first output of the ONNX node with this name.
    Node(String),
    /// The data input of the last `Gemm` or `MatMul` node (the features fed to the classifier).
    InputOfLastGemm,
    /// The output of the last `GlobalAveragePool` node (flattened per image).
    OutputOfLastGlobalAveragePool,
}

impl fmt::Display for EmbeddingSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmbeddingSelector::Output(t) => write!(f, "output = {t:?}"),
            EmbeddingSelector::Node(n) => write!(f, "node = {n:?}"),
            EmbeddingSelector::InputOfLastGemm => f.write_str("select = \"input_of_last_gemm\""),
            EmbeddingSelector::OutputOfLastGlobalAveragePool => {
                f.write_str("select = \"output_of_last_global_average_pool\"")
            }
        }
    }
}

/// A model spec, loaded and validated. See the module docs for the file format.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Short model name (logged, and stored by callers as provenance).
    pub name: String,
    /// Where `models/fetch` downloads the model from.
    pub source_url: String,
    /// Expected sha256 of the model file, lowercase hex. Verified by [`ModelSpec::read_model`].
    pub sha256: String,
    /// The model file, resolved against the spec file's directory.
    pub file: PathBuf,
    /// The input tensor.
    pub input: InputSpec,
    /// Preprocessing parameters.
    pub preprocess: PreprocessSpec,
    /// Which tensor is the embedding.
    pub embedding: EmbeddingSelector,
    /// Expected embedding dimension (elements per image once flattened).
    pub dimension: usize,
}

/// The model file cannot be used: unreadable, or not the file the spec names.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// The model file cannot be read (e.g. not fetched yet).
    #[error("cannot read model {}: {source}", file.display())]
    Io {
        /// The model file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file's sha256 is not the spec's.
    #[error("model {} has sha256 {actual}, but the spec says {expected}", file.display())]
    ShaMismatch {
        /// The model file.
        file: PathBuf,
        /// sha256 from the spec.
        expected: String,
        /// sha256 of the file.
        actual: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    source_url: String,
    sha256: String,
    file: PathBuf,
    input: InputSpec,
    preprocess: PreprocessSpec,
    embedding: RawEmbedding,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmbedding {
    output: Option<String>,
    node: Option<String>,
    select: Option<String>,
    dimension: usize,
}

impl ModelSpec {
    /// The model file's bytes, refused unless their sha256 is the spec's.
    pub fn read_model(&self) -> Result<Vec<u8>, ModelFileError> {
        use sha2::Digest;
        let bytes = std::fs::read(&self.file).map_err(|source| ModelFileError::Io {
            file: self.file.clone(),
            source,
        })?;
        let actual = hex::encode(sha2::Sha256::digest(&bytes));
        if actual != self.sha256 {
            return Err(ModelFileError::ShaMismatch {
                file: self.file.clone(),
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Reads and validates a spec file. The model file itself is not opened here
    /// (`embatch_engine::Engine::load` verifies it).
    pub fn from_path(path: &Path) -> Result<ModelSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, dir).map_err(|e| match e {
            SpecError::Parse { message, .. } => SpecError::Parse {
                path: path.to_path_buf(),
                message,
            },
            SpecError::Invalid { reason, .. } => SpecError::Invalid {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses a spec from TOML text; a relative `file` is resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<ModelSpec, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: PathBuf::from("<toml>"),
            message: e.to_string(),
        })?;
        let invalid = |reason: String| SpecError::Invalid {
            path: PathBuf::from("<toml>"),
            reason,
        };
        let embedding = match (raw.embedding.output, raw.embedding.node, raw.embedding.select) {
            (Some(t), None, None) => EmbeddingSelector::Output(t),
            (None, Some(n), None) => EmbeddingSelector::Node(n),
            (None, None, Some(s)) => match s.as_str() {
                "input_of_last_gemm" => EmbeddingSelector::InputOfLastGemm,
                "output_of_last_global_average_pool" => {
                    EmbeddingSelector::OutputOfLastGlobalAveragePool
                }
                other => {
                    return Err(invalid(format!(
                        "embedding.select = {other:?}: expected \"input_of_last_gemm\" or \"output_of_last_global_average_pool\""
                    )))
                }
            },
            _ => {
                return Err(invalid(
                    "[embedding] needs exactly one of `output`, `node` or `select`".into(),
                ))
            }
        };
        let sha256 = raw.sha256.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "sha256 = {:?} is not 64 hex digits",
                raw.sha256
            )));
        }
        let p = &raw.preprocess;
        if raw.input.width == 0 || raw.input.height == 0 {
            return Err(invalid("input width and height must be positive".into()));
        }
        if p.crop_width != raw.input.width || p.crop_height != raw.input.height {
            return Err(invalid(format!(
                "the crop ({}x{}) must equal the model input ({}x{})",
                p.crop_width, p.crop_height, raw.input.width, raw.input.height
            )));
        }
        if p.resize_shorter_to < p.crop_width.max(p.crop_height) {
            return Err(invalid(format!(
                "resize_shorter_to ({}) is smaller than the crop ({}x{})",
                p.resize_shorter_to, p.crop_width, p.crop_height
            )));
        }
        if !(p.scale.is_finite() && p.scale > 0.0) {
            return Err(invalid(format!("scale = {} must be positive", p.scale)));
        }
        if p.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || p.mean.iter().any(|m| !m.is_finite())
        {
            return Err(invalid("mean must be finite and std positive".into()));
        }
        if raw.embedding.dimension == 0 {
            return Err(invalid("embedding.dimension must be positive".into()));
        }
        Ok(ModelSpec {
            name: raw.name,
            source_url: raw.source_url,
            sha256,
            file: base_dir.join(raw.file),
            input: raw.input,
            preprocess: raw.preprocess,
            embedding,
            dimension: raw.embedding.dimension,
        })
    }

    /// The same spec with the model file at another path (e.g. a model kept outside the repo).
    pub fn with_file(mut self, file: impl Into<PathBuf>) -> ModelSpec {
        self.file = file.into();
        self
    }
}
