//! Winograd convolution in the tract plan: a rewrite of the typed model replaces each 3×3,
//! stride-1, dilation-1, single-group f32 `Conv` whose weights are constant by a
//! [`WinogradConv`] op; every other op stays tract's.

mod gemm;
mod one_conv;
mod op;
mod transform;
mod transpose;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::rewrite::{all_ones, replace_nodes};

pub use one_conv::OneConv;
pub use op::{Geometry, WinogradConv};
pub use transform::{TileKind, F2, F4};

/// How the engine computes 3×3 stride-1 convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvAlgorithm {
    /// The measured best per layer (see [`ConvAlgorithm::tile_for`]).
    #[default]
    Auto,
    /// Winograd everywhere it applies: F(4×4) where the output is at least 8 wide, else F(2×2).
    Winograd,
    /// Winograd F(2×2, 3×3) everywhere it applies (for measurement).
    F2,
    /// Winograd F(4×4, 3×3) everywhere it applies (for measurement).
    F4,
    /// tract's own plan, unchanged: im2col + matrix multiplication for every convolution, and
    /// tract's max pooling (the other values also swap it for [`crate::maxpool::RowMaxPool`]).
    Im2col,
}

impl std::str::FromStr for ConvAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "winograd" => Ok(Self::Winograd),
            "f2" => Ok(Self::F2),
            "f4" => Ok(Self::F4),
            "im2col" => Ok(Self::Im2col),
            _ => Err(format!(
                "unknown convolution algorithm `{s}`: expected auto, winograd, f2, f4 or im2col"
            )),
        }
    }
}

impl std::fmt::Display for ConvAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Winograd => "winograd",
            Self::F2 => "f2",
            Self::F4 => "f4",
            Self::Im2col => "im2col",
        })
    }
}

impl ConvAlgorithm {
    /// The tile for a convolution of this shape, or `None` to leave it to tract.
    pub fn tile_for(self, geo: &Geometry) -> Option<&'static TileKind> {
        match self {
            Self::Im2col => None,
            Self::F2 => Some(&F2),
            Self::F4 => Some(&F4),
            Self::Winograd => Some(if geo.out_w >= 8 { &F4 } else { &F2 }),
            Self::Auto => Some(if geo.out_w >= 16 { &F4 } else { &F2 }),
        }
    }
}

/// Replaces the eligible convolutions of `model` (typed, before optimisation) by Winograd
/// ops as `algorithm` chooses; returns how many were replaced.
pub fn rewrite(model: &mut TypedModel, algorithm: ConvAlgorithm) -> TractResult<usize> {
    replace_nodes(model, |model, id| {
        let Some(Eligible { geo, weights, bias }) = eligible(model, id)? else {
            return Ok(None);
        };
        Ok(algorithm
            .tile_for(&geo)
            .map(|tile| WinogradConv::new(tile, geo, &weights, bias)))
    })
}

/// A convolution Winograd computes.
struct Eligible {
    geo: Geometry,
    /// OIHW, K×C×3×3.
    weights: Vec<f32>,
    /// One per output channel.
    bias: Vec<f32>,
}

/// Node `id` if it is a convolution Winograd computes: f32, NCHW, OIHW, 3×3, stride 1,
/// dilation 1, group 1, channels in whole vectors, constant weights and bias.
fn eligible(model: &TypedModel, id: usize) -> TractResult<Option<Eligible>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || spec.kernel_shape.as_slice() != [3, 3]
        || !all_ones(&spec.strides)
        || !all_ones(&spec.dilations)
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let facts = model.node_input_facts(id)?;
    let (Some(shape), Some(kernel), Some(bias)) = (
        facts[0].shape.as_concrete(),
        facts[1].konst.as_ref(),
        facts[2].konst.as_ref(),
    ) else {
        return Ok(None);
    };
    if facts[0].datum_type != f32::datum_type()
        || kernel.datum_type() != f32::datum_type()
        || shape.len() != 4
    {
        return Ok(None);
    }
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let k = spec.output_channels;
    // The transforms work on whole vectors of channels.
    if c % transform::LANES != 0 || k % transform::LANES != 0 {
        return Ok(None);
    }
    let pads = spec.computed_padding(&[h, w]);
    let geo = Geometry {
        n,
        c,
        h,
        w,
        k,
        pad_top: pads[0].pad_before,
        pad_left: pads[1].pad_before,
        out_h: pads[0].convoluted,
        out_w: pads[1].convoluted,
    };
    let weights = kernel
        .cast_to::<f32>()?
        .try_as_plain_ram()?
        .as_slice::<f32>()?
        .to_vec();
    if weights.len() != k * c * 9 {
        return Ok(None);
    }
    let bias = bias.cast_to::<f32>()?;
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias = match bias.len() {
        1 => vec![bias[0]; k],
        len if len == k => bias,
        _ => return Ok(None),
    };
    Ok(Some(Eligible { geo, weights, bias }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::PaddingSpec;

    type Case = OneConv;

    /// (Winograd ops put in, largest |difference| from tract's own plan) for `case`.
    fn run(case: &OneConv, algorithm: ConvAlgorithm) -> (usize, f32) {
        let input = case.input().unwrap();
        let out = |model: TypedModel| {
            let plan = model.into_optimized().unwrap().into_runnable().unwrap();
            let out = plan.run(tvec![input.clone()]).unwrap().remove(0);
            let view = out.try_as_plain_ram().unwrap();
            (
                out.shape().to_vec(),
                view.as_slice::<f32>().unwrap().to_vec(),
            )
        };
        let reference = out(case.model().unwrap());
        let mut model = case.model().unwrap().into_decluttered().unwrap();
        let replaced = rewrite(&mut model, algorithm).unwrap();
        let ours = out(model);
        assert_eq!(ours.0, reference.0, "output shape");
        let diff = ours
            .1
            .iter()
            .zip(&reference.1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        (replaced, diff)
    }

    #[test]
    fn both_tiles_match_tracts_convolution_at_odd_sizes_paddings_and_batches() {
        let cases = [
            // Output 9x7: tiles clipped at the bottom and right edges.
            Case::new(
                2,
                8,
                16,
                (9, 7),
                PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
            ),
            // No padding: output 5x6.
            Case::new(1, 16, 8, (7, 8), PaddingSpec::Valid),
            // Asymmetric padding: two rows above, one column right.
            Case::new(
                1,
                8,
                8,
                (6, 5),
                PaddingSpec::Explicit(tvec![2, 0], tvec![0, 1]),
            ),
            Case::new(3, 8, 24, (4, 4), PaddingSpec::SameUpper),
            Case {
                scalar_bias: true,
                ..Case::new(
                    1,
                    8,
                    8,
                    (11, 13),
                    PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
                )
            },
        ];
        for case in &cases {
            for algorithm in [ConvAlgorithm::F2, ConvAlgorithm::F4, ConvAlgorithm::Auto] {
                let (replaced, diff) = run(case, algorithm);
                assert_eq!(
                    replaced,
                    1,
                    "{algorithm} on {:?}",
                    (case.n, case.c, case.hw)
                );
                assert!(
                    diff < 2e-5,
                    "{algorithm} on {:?}: max |diff| {diff}",
                    (case.n, case.c, case.hw)
                );
            }
        }
    }

    #[test]
    fn convolutions_winograd_does_not_compute_stay_tracts() {
        let same = PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]);
        let cases = [
            Case {
                stride: 2,
                ..Case::new(1, 8, 8, (8, 8), same.clone())
            },
            // Depthwise, as in MobileNetV2.
            Case {
                group: 8,
                ..Case::new(1, 8, 8, (8, 8), same.clone())
            },
            // Channels not a multiple of the vector width.
            Case::new(1, 3, 8, (8, 8), same.clone()),
            Case::new(1, 8, 12, (8, 8), same),
        ];
        for case in &cases {
            let (replaced, diff) = run(case, ConvAlgorithm::Winograd);
            assert_eq!(
                replaced,
                0,
                "{:?}",
                (case.c, case.k, case.stride, case.group)
            );
            assert_eq!(diff, 0.0, "tract's own plan, untouched");
        }
        let (replaced, diff) = run(
            &Case::new(1, 8, 8, (8, 8), PaddingSpec::Valid),
            ConvAlgorithm::Im2col,
        );
        assert_eq!((replaced, diff), (0, 0.0), "im2col rewrites nothing");
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in [
            ConvAlgorithm::Auto,
            ConvAlgorithm::Winograd,
            ConvAlgorithm::F2,
            ConvAlgorithm::F4,
            ConvAlgorithm::Im2col,
        ] {
            assert_eq!(a.to_string().parse::<ConvAlgorithm>(), Ok(a));
        }
        let err = "fft".parse::<ConvAlgorithm>().unwrap_err();
        assert!(err.contains("`fft`") && err.contains("im2col"), "{err}");
    }
}
