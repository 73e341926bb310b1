//! Max pooling as an op of ours in the tract plan: NCHW f32, any 2-D kernel, stride and padding,
//! no dilation, no index output. tract's `OptMaxPool` visits each output's window value by
//! value (1.7 ms of ResNet18's 31 at batch 1); this op takes the maximum over the window's
//! rows first, whole rows at a time (a loop LLVM vectorises), then over its columns. The result
//! is tract's exactly: a maximum does not round, and both ignore NaN and start from `f32::MIN`.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::MaxPool;
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::rewrite::{all_ones, eval_f32, replace_nodes};

/// Shape of one pooling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolGeometry {
    /// Images × channels: the planes pooled one by one.
    pub planes: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Strides, rows and columns.
    pub stride: (usize, usize),
    /// Rows above and columns left of the input that the windows may cover.
    pub pad: (usize, usize),
    /// Output height and width.
    pub out: (usize, usize),
    /// The output's shape (the input's, with the pooled axes replaced).
    pub out_shape: TVec<usize>,
}

/// The pooling op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowMaxPool {
    /// The shape it pools.
    pub geo: PoolGeometry,
}

/// Replaces every eligible `MaxPool` of `model` (typed, before optimisation) by a
/// [`RowMaxPool`]; returns how many were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    replace_nodes(model, |model, id| {
        Ok(eligible(model, id)?.map(|geo| RowMaxPool { geo }))
    })
}

/// Node `id` if it is a max pooling this op computes.
fn eligible(model: &TypedModel, id: usize) -> TractResult<Option<PoolGeometry>> {
    let node = model.node(id);
    let Some(pool) = node.op_as::<MaxPool>() else {
        return Ok(None);
    };
    let spec = &pool.pool_spec;
    if pool.with_index_outputs.is_some()
        || spec.data_format != DataFormat::NCHW
        || spec.kernel_shape.len() != 2
        || !all_ones(&spec.dilations)
    {
        return Ok(None);
    }
    let fact = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = fact.shape.as_concrete() else {
        return Ok(None);
    };
    if fact.datum_type != f32::datum_type() || shape.len() != 4 {
        return Ok(None);
    }
    let (h, w) = (shape[2], shape[3]);
    let pads = spec.computed_padding(&[h, w]);
    let strides = spec.strides();
    let out = (pads[0].convoluted, pads[1].convoluted);
    Ok(Some(PoolGeometry {
        planes: shape[0] * shape[1],
        h,
        w,
        kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
        stride: (strides[0], strides[1]),
        pad: (pads[0].pad_before, pads[1].pad_before),
        out,
        out_shape: tvec![shape[0], shape[1], out.0, out.1],
    }))
}

/// The input indices `start..end` a window at output index `o` covers, clipped to `0..len`.
fn window(o: usize, stride: usize, pad: usize, kernel: usize, len: usize) -> (usize, usize) {
    let first = (o * stride) as isize - pad as isize;
    let start = first.clamp(0, len as isize) as usize;
    let end = (first + kernel as isize).clamp(0, len as isize) as usize;
    (start, end)
}

impl RowMaxPool {
    /// Pools `input` (planes × h × w) into `output` (planes × out_h × out_w).
    fn pool(&self, input: &[f32], output: &mut [f32]) {
        let g = &self.geo;
        let (out_h, out_w) = g.out;
        let mut rows = vec![f32::MIN; g.w];
        for (plane, out) in input
            .chunks_exact(g.h * g.w)
            .zip(output.chunks_exact_mut(out_h * out_w))
        {
            for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
                let (y0, y1) = window(oy, g.stride.0, g.pad.0, g.kernel.0, g.h);
                rows.fill(f32::MIN);
                for row in plane[y0 * g.w..y1 * g.w].chunks_exact(g.w) {
                    for (m, &v) in rows.iter_mut().zip(row) {
                        *m = if v > *m { v } else { *m };
                    }
                }
                for (ox, o) in out_row.iter_mut().enumerate() {
                    let (x0, x1) = window(ox, g.stride.1, g.pad.1, g.kernel.1, g.w);
                    *o = rows[x0..x1]
                        .iter()
                        .fold(f32::MIN, |m, &v| if v > m { v } else { m });
                }
            }
        }
    }
}

impl Op for RowMaxPool {
    fn name(&self) -> StaticName {
        "RowMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.geo)])
    }

    op_as_typed_op!();
}

impl EvalOp for RowMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let g = &self.geo;
        ensure!(
            input.len() == g.planes * g.h * g.w,
            "RowMaxPool expects {} planes of {}x{}, got {:?}",
            g.planes,
            g.h,
            g.w,
            input.shape()
        );
        // `pool` writes every output value (each output row whole).
        eval_f32(&input, &g.out_shape, |x, y| self.pool(x, y))
    }
}

impl TypedOp for RowMaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(&*self.geo.out_shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    use super::*;

    /// One MaxPool over an N×C×H×W input, as a typed model.
    fn model(
        shape: [usize; 4],
        kernel: usize,
        stride: usize,
        padding: PaddingSpec,
    ) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape))?;
        let pool = MaxPool {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![kernel, kernel],
                padding,
                dilations: None,
                strides: Some(tvec![stride, stride]),
                input_channels: shape[1],
                output_channels: shape[1],
            },
            with_index_outputs: None,
        };
        let y = model.wire_node("pool", pool, &[x])?;
        model.select_output_outlets(&y)?;
        Ok(model)
    }

    /// ResNet's 3×3 stride-2 pooling and other shapes (odd sizes, no padding, windows wider
    /// than the stride, overlapping the edges) give tract's values exactly, negative inputs
    /// included (a zero from the padding would show).
    #[test]
    fn pools_exactly_as_tract() -> TractResult<()> {
        let explicit = |p: usize| PaddingSpec::Explicit(tvec![p, p], tvec![p, p]);
        let cases = [
            ([1, 64, 112, 112], 3, 2, explicit(1)),
            ([2, 3, 13, 9], 3, 2, explicit(1)),
            ([1, 5, 8, 8], 2, 2, PaddingSpec::Valid),
            ([1, 4, 7, 11], 3, 1, PaddingSpec::SameUpper),
            ([2, 2, 5, 5], 5, 3, explicit(2)),
        ];
        for (shape, kernel, stride, padding) in cases {
            let len: usize = shape.iter().product();
            let values: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.75)
                .collect();
            let input: TValue = Tensor::from_shape(&shape, &values)?.into();
            let base = model(shape, kernel, stride, padding.clone())?.into_decluttered()?;
            let mut ours = base.clone();
            assert_eq!(rewrite(&mut ours)?, 1, "{shape:?} k{kernel} s{stride}");
            let theirs = base.into_optimized()?.into_runnable()?;
            let ours = ours.into_optimized()?.into_runnable()?;
            let want = theirs.run(tvec![input.clone()])?.remove(0);
            let got = ours.run(tvec![input])?.remove(0);
            assert_eq!(got.shape(), want.shape(), "{shape:?} k{kernel} s{stride}");
            assert_eq!(
                got.try_as_plain_ram()?.as_slice::<f32>()?,
                want.try_as_plain_ram()?.as_slice::<f32>()?,
                "{shape:?} k{kernel} s{stride} {padding:?}"
            );
        }
        Ok(())
    }
}
