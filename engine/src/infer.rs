//! The engine: load and optimise a model once, then prepare images and embed them from many
//! threads at once.

use std::path::PathBuf;
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::decode::ImageError;
use crate::limits::Limits;
use crate::maxpool;
use crate::preprocess::Prepared;
use crate::spec::{EmbeddingSelector, Layout, ModelFileError, ModelSpec};
use crate::winograd::{self, ConvAlgorithm};

/// Batch size of one inference run, chosen by measurement (`examples/bench.rs`, see
/// BENCHMARKS.md "## Engine"): tract's single-threaded convolutions are fastest per image at
/// batch 1 here, and throughput on all cores comes from independent runs on separate threads
/// (one per core), not from larger batches.
pub const PREFERRED_BATCH: usize = 1;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be read.
    #[error("cannot read model file {file}: {source}")]
    Io {
        /// The model file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model file is not the one the spec names.
    #[error("model file {file} has sha256 {actual}, but its spec expects {expected}: refusing to load it (re-fetch with models/fetch)")]
    ShaMismatch {
        /// The model file.
        file: PathBuf,
        /// sha256 from the spec.
        expected: String,
        /// sha256 of the file.
        actual: String,
    },
    /// The file is not a model tract can load, or the spec does not fit its graph.
    #[error("cannot use model {file}: {message}")]
    Model {
        /// The model file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The spec's embedding selector matches no tensor of the graph.
    #[error("model {file}: the embedding selector `{selector}` matches no tensor in the graph")]
    EmbeddingNotFound {
        /// The model file.
        file: PathBuf,
        /// The selector from the spec.
        selector: String,
    },
    /// The embedding has a different size than the spec says.
    #[error("model {file}: the spec says the embedding has dimension {spec}, but tensor `{tensor}` has {model} elements per image")]
    DimensionMismatch {
        /// The model file.
        file: PathBuf,
        /// The tensor used as embedding.
        tensor: String,
        /// Dimension from the spec.
        spec: usize,
        /// Elements per image the model produces.
        model: usize,
    },
    /// A [`Prepared`] tensor does not have the size this model's input needs.
    #[error("prepared tensor has {actual} values, the model input needs {expected}")]
    BadInput {
        /// Values the model needs per image.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// Inference failed.
    #[error("inference failed for model {file}: {message}")]
    Inference {
        /// The model file.
        file: PathBuf,
        /// The tract error, with its context chain.
        message: String,
    },
}

/// Tuning knobs for [`Engine::load_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Images per inference run (the batch axis the plan is optimised for).
    pub batch: usize,
    /// How 3×3 stride-1 convolutions are computed.
    pub conv: ConvAlgorithm,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch: PREFERRED_BATCH,
            conv: ConvAlgorithm::default(),
        }
    }
}

/// A loaded, optimised model plus its spec. `Send + Sync`: load once, share by `&` or `Arc`;
/// [`Engine::prepare`] and [`Engine::embed`] may be called from many threads at once (each
/// inference run keeps its own state; the optimised plan is shared read-only).
pub struct Engine {
    spec: ModelSpec,
    plan: Arc<TypedSimplePlan>,
    batch: usize,
    per_image: usize,
    tensor_name: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.spec.name)
            .field("file", &self.spec.file)
            .field("embedding", &self.tensor_name)
            .field("dimension", &self.spec.dimension)
            .field("batch", &self.batch)
            .finish()
    }
}

impl Engine {
    /// Loads the model of `spec` with the default options (batch [`PREFERRED_BATCH`]).
    pub fn load(spec: &ModelSpec) -> Result<Engine, EngineError> {
        Self::load_with(spec, EngineOptions::default())
    }

    /// Loads the model: verifies the file's sha256 against the spec, resolves the embedding
    /// tensor (logged), optimises the graph up to that tensor for a fixed batch, and checks
    /// the embedding dimension against the spec with one run on a zero input.
    pub fn load_with(spec: &ModelSpec, options: EngineOptions) -> Result<Engine, EngineError> {
        let file = spec.file.clone();
        let model_err = |message: String| EngineError::Model {
            file: file.clone(),
            message,
        };
        let bytes = spec.read_model().map_err(|e| match e {
            ModelFileError::Io { file, source } => EngineError::Io { file, source },
            ModelFileError::ShaMismatch {
                file,
                expected,
                actual,
            } => EngineError::ShaMismatch {
                file,
                expected,
                actual,
            },
        })?;
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| model_err(format!("not a readable ONNX model: {e:#}")))?;
        drop(bytes);
        let tensor_name = embedding_of(spec, &proto)?;
        let batch = options.batch.max(1);
        let plan = optimise(&onnx, &proto, spec, (batch, options.conv), &tensor_name)?;
        let (w, h) = (spec.input.width as usize, spec.input.height as usize);
        let mut engine = Engine {
            spec: spec.clone(),
            plan,
            batch,
            per_image: 3 * w * h,
            tensor_name,
        };
        let zeros = vec![0f32; batch * engine.per_image];
        let model_dim = engine.run(&zeros, batch)?.len() / batch;
        if model_dim != spec.dimension {
            return Err(EngineError::DimensionMismatch {
                file,
                tensor: std::mem::take(&mut engine.tensor_name),
                spec: spec.dimension,
                model: model_dim,
            });
        }
        Ok(engine)
    }

    /// The spec this engine was loaded from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Embedding dimension (elements per vector), checked against the model at load.
    pub fn dimension(&self) -> usize {
        self.spec.dimension
    }

    /// Images per inference run; pass [`Engine::embed`] slices of this length for the best
    /// throughput (other lengths work too). Chosen by measurement: see [`PREFERRED_BATCH`].
    pub fn preferred_batch(&self) -> usize {
        self.batch
    }

    /// Name of the graph tensor used as the embedding (resolved from the spec's selector).
    pub fn embedding_tensor(&self) -> &str {
        &self.tensor_name
    }

    /// Decodes and preprocesses one encoded image for this model. Pure CPU work on the
    /// calling thread; call it from many (rayon) threads at once.
    pub fn prepare(&self, bytes: &[u8], limits: &Limits) -> Result<Prepared, ImageError> {
        crate::prepare(bytes, &self.spec, limits)
    }

    /// Embeds prepared images: one vector of [`Engine::dimension`] values per image, in
    /// order. Runs on the calling thread; call it from several threads at once for throughput.
    pub fn embed(&self, batch: &[Prepared]) -> Result<Vec<Vec<f32>>, EngineError> {
        if let Some(bad) = batch.iter().find(|p| p.tensor.len() != self.per_image) {
            return Err(EngineError::BadInput {
                expected: self.per_image,
                actual: bad.tensor.len(),
            });
        }
        let mut vectors = Vec::with_capacity(batch.len());
        let mut input = Vec::with_capacity(self.batch * self.per_image);
        for chunk in batch.chunks(self.batch) {
            input.clear();
            for p in chunk {
                input.extend_from_slice(&p.tensor);
            }
            // The plan has a fixed batch axis: pad a short last chunk with zeros.
            input.resize(self.batch * self.per_image, 0.0);
            let out = self.run(&input, self.batch)?;
            vectors.extend(
                out.chunks_exact(self.spec.dimension)
                    .take(chunk.len())
                    .map(<[f32]>::to_vec),
            );
        }
        Ok(vectors)
    }

    /// One run of the plan on `batch` images laid out back to back; the flattened output.
    fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, EngineError> {
        let (w, h) = (
            self.spec.input.width as usize,
            self.spec.input.height as usize,
        );
        let shape = match self.spec.input.layout {
            Layout::Nchw => [batch, 3, h, w],
            Layout::Nhwc => [batch, h, w, 3],
        };
        let infer_err = |e: TractError| EngineError::Inference {
            file: self.spec.file.clone(),
            message: format!("{e:#}"),
        };
        let tensor = Tensor::from_shape(&shape, input).map_err(infer_err)?;
        let outputs = self.plan.run(tvec!(tensor.into())).map_err(infer_err)?;
        let view = outputs[0].try_as_plain_ram().map_err(infer_err)?;
        let out = view.as_slice::<f32>().map_err(infer_err)?;
        Ok(out.to_vec())
    }
}

/// Time one node of the plan took, summed over the runs of [`Engine::profile`].
#[derive(Debug, Clone)]
pub struct NodeTime {
    /// The node's name in the optimised plan.
    pub name: String,
    /// The op's name (`OptMatMul`, `WinogradF4x3`, ...).
    pub op: String,
    /// What the op says of itself (shapes, kernel choice).
    pub info: String,
    /// Mean seconds per run.
    pub seconds: f64,
}

impl Engine {
    /// Per-node time of the optimised plan on a zero input, averaged over `runs` runs after
    /// one warm-up, in plan order.
    pub fn profile(&self, runs: usize) -> Result<Vec<NodeTime>, EngineError> {
        let infer_err = |e: TractError| EngineError::Inference {
            file: self.spec.file.clone(),
            message: format!("{e:#}"),
        };
        let input = self
            .plan
            .model()
            .input_fact(0)
            .map_err(infer_err)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec());
        let shape = input.ok_or_else(|| EngineError::Inference {
            file: self.spec.file.clone(),
            message: "the plan's input shape is not concrete".into(),
        })?;
        let tensor: TValue = Tensor::zero::<f32>(&shape).map_err(infer_err)?.into();
        let mut seconds = vec![0f64; self.plan.model().nodes().len()];
        let mut state = TypedSimpleState::new(&self.plan).map_err(infer_err)?;
        for run in 0..=runs {
            state
                .run_plan_with_eval(tvec!(tensor.clone()), |ctx, op_state, node, inputs| {
                    let start = std::time::Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                    if run > 0 {
                        seconds[node.id] += start.elapsed().as_secs_f64();
                    }
                    out
                })
                .map_err(infer_err)?;
        }
        let model = self.plan.model();
        Ok(self
            .plan
            .order_without_consts()
            .iter()
            .map(|&id| {
                let node = model.node(id);
                NodeTime {
                    name: node.name.clone(),
                    op: node.op.name().to_string(),
                    info: node.op.info().map(|i| i.join("; ")).unwrap_or_default(),
                    seconds: seconds[id] / runs.max(1) as f64,
                }
            })
            .collect())
    }
}

/// The embedding tensor's name (logged with its node), after checking that the graph's only
/// input is the spec's.
fn embedding_of(spec: &ModelSpec, proto: &pb::ModelProto) -> Result<String, EngineError> {
    let file = &spec.file;
    let model_err = |message: String| EngineError::Model {
        file: file.clone(),
        message,
    };
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| model_err("the ONNX file has no graph".into()))?;
    let (node_name, tensor_name) = resolve_embedding(graph, &spec.embedding).ok_or_else(|| {
        EngineError::EmbeddingNotFound {
            file: file.clone(),
            selector: spec.embedding.to_string(),
        }
    })?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !initializers.contains(n))
        .collect();
    if inputs != [spec.input.name.as_str()] {
        return Err(model_err(format!(
            "the spec names input `{}`, the graph's inputs are {:?}",
            spec.input.name, inputs
        )));
    }
    tracing::info!(
        model = %spec.name,
        file = %file.display(),
        selector = %spec.embedding,
        node = %node_name,
        tensor = %tensor_name,
        "resolved the embedding tensor"
    );
    Ok(tensor_name)
}

/// The graph up to `tensor_name`, typed for `batch` images of the spec's input and optimised.
fn optimise(
    onnx: &tract_onnx::Onnx,
    proto: &pb::ModelProto,
    spec: &ModelSpec,
    (batch, conv): (usize, ConvAlgorithm),
    tensor_name: &str,
) -> Result<Arc<TypedSimplePlan>, EngineError> {
    let model_err = |message: String| EngineError::Model {
        file: spec.file.clone(),
        message,
    };
    let (w, h) = (spec.input.width as usize, spec.input.height as usize);
    let shape = match spec.input.layout {
        Layout::Nchw => [batch, 3, h, w],
        Layout::Nhwc => [batch, h, w, 3],
    };
    let mut model = onnx
        .model_for_proto_model(proto)
        .map_err(|e| model_err(format!("{e:#}")))?;
    model
        .set_input_fact(0, f32::fact(shape).into())
        .map_err(|e| model_err(format!("{e:#}")))?;
    let outlet =
        model
            .find_outlet_label(tensor_name)
            .ok_or_else(|| EngineError::EmbeddingNotFound {
                file: spec.file.clone(),
                selector: spec.embedding.to_string(),
            })?;
    model
        .select_output_outlets(&[outlet])
        .map_err(|e| model_err(format!("{e:#}")))?;
    let mut typed = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(|e| model_err(format!("typing the graph: {e:#}")))?;
    let replaced = winograd::rewrite(&mut typed, conv)
        .map_err(|e| model_err(format!("rewriting convolutions ({conv}): {e:#}")))?;
    tracing::debug!(model = %spec.name, %conv, replaced, "Winograd convolutions");
    // `im2col` is tract's plan unchanged (the A/B baseline): no op of ours at all.
    if conv != ConvAlgorithm::Im2col {
        let pools = maxpool::rewrite(&mut typed)
            .map_err(|e| model_err(format!("rewriting max pooling: {e:#}")))?;
        tracing::debug!(model = %spec.name, pools, "row max pooling");
    }
    typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| model_err(format!("optimising the graph: {e:#}")))
}

/// Finds the embedding tensor in the ONNX graph: `(node name, tensor name)`. Nodes of an ONNX
/// graph are stored in topological order, so "last" means closest to the output.
fn resolve_embedding(graph: &pb::GraphProto, sel: &EmbeddingSelector) -> Option<(String, String)> {
    let first_output = |n: &pb::NodeProto| n.output.first().cloned();
    match sel {
        EmbeddingSelector::Output(t) => graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == t))
            .map(|n| (n.name.clone(), t.clone())),
        EmbeddingSelector::Node(name) => graph
            .node
            .iter()
            .find(|n| &n.name == name)
            .and_then(|n| Some((n.name.clone(), first_output(n)?))),
        EmbeddingSelector::InputOfLastGemm => {
            let gemm = graph
                .node
                .iter()
                .rev()
                .find(|n| n.op_type == "Gemm" || n.op_type == "MatMul")?;
            let tensor = gemm.input.first()?.clone();
            let producer = graph.node.iter().find(|n| n.output.contains(&tensor))?;
            Some((producer.name.clone(), tensor))
        }
        EmbeddingSelector::OutputOfLastGlobalAveragePool => graph
            .node
            .iter()
            .rev()
            .find(|n| n.op_type == "GlobalAveragePool")
            .and_then(|n| Some((n.name.clone(), first_output(n)?))),
    }
}
