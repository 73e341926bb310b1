//! A model of one 3×3 convolution with deterministic weights and input: what the per-layer
//! benchmark (`examples/winograd.rs`) times and the tests compare against tract's own plan.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// The shape of the one convolution.
#[derive(Debug, Clone)]
pub struct OneConv {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub k: usize,
    /// Input height and width.
    pub hw: (usize, usize),
    /// Padding.
    pub padding: PaddingSpec,
    /// Stride, both axes.
    pub stride: usize,
    /// Groups (C for depthwise).
    pub group: usize,
    /// Bias as one value for every channel (a scalar input), else one per channel.
    pub scalar_bias: bool,
}

impl OneConv {
    /// Stride 1, one group, a bias per channel.
    pub fn new(n: usize, c: usize, k: usize, hw: (usize, usize), padding: PaddingSpec) -> OneConv {
        OneConv {
            n,
            c,
            k,
            hw,
            padding,
            stride: 1,
            group: 1,
            scalar_bias: false,
        }
    }

    /// The typed model: source `x` (N×C×H×W), constant OIHW weights and bias, one `Conv`.
    pub fn model(&self) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let (h, w) = self.hw;
        let x = model.add_source("x", f32::fact([self.n, self.c, h, w]))?;
        let cg = self.c / self.group;
        let weights: Vec<f32> = (0..self.k * cg * 9)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let kernel =
            model.add_const("kernel", Tensor::from_shape(&[self.k, cg, 3, 3], &weights)?)?;
        let bias = if self.scalar_bias {
            tensor0(0.25f32)
        } else {
            let b: Vec<f32> = (0..self.k).map(|i| i as f32 * 0.01 - 0.1).collect();
            Tensor::from_shape(&[self.k], &b)?
        };
        let bias = model.add_const("bias", bias)?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![3, 3],
                padding: self.padding.clone(),
                dilations: None,
                strides: Some(tvec![self.stride, self.stride]),
                input_channels: self.c,
                output_channels: self.k,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: self.group,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, kernel, bias])?;
        model.select_output_outlets(&y)?;
        Ok(model)
    }

    /// A deterministic input in [-1, 1).
    pub fn input(&self) -> TractResult<TValue> {
        let (h, w) = self.hw;
        let len = self.n * self.c * h * w;
        let input: Vec<f32> = (0..len)
            .map(|i| (i * 104_729 % 2003) as f32 / 1001.5 - 1.0)
            .collect();
        Ok(Tensor::from_shape(&[self.n, self.c, h, w], &input)?.into())
    }
}
