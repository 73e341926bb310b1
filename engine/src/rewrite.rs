//! What the rewrites of the typed model share (`winograd`, `maxpool`): swapping nodes for ops of
//! ours, and evaluating those ops, f32 in and f32 out.

use tract_onnx::prelude::*;

/// Replaces each node of `model` (typed, before optimisation) for which `op_for` gives an op by
/// that op, wired to the node's first input; returns how many were replaced.
pub(crate) fn replace_nodes<O: TypedOp>(
    model: &mut TypedModel,
    mut op_for: impl FnMut(&TypedModel, usize) -> TractResult<Option<O>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(op) = op_for(model, id)? else {
            continue;
        };
        let node = model.node(id);
        let input = node.inputs[0];
        TypedModelPatch::replace_single_op(model, node, &[input], op)?.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// Whether strides or dilations are absent or all 1.
pub(crate) fn all_ones(v: &Option<TVec<usize>>) -> bool {
    v.as_ref().is_none_or(|v| v.iter().all(|&x| x == 1))
}

/// Runs `compute` from `input`'s f32 values into a new tensor of `out_shape`, which `compute`
/// must write whole (it starts uninitialised).
pub(crate) fn eval_f32(
    input: &TValue,
    out_shape: &[usize],
    compute: impl FnOnce(&[f32], &mut [f32]),
) -> TractResult<TVec<TValue>> {
    let view = input.try_as_plain_ram()?;
    // SAFETY: every caller's `compute` writes each output value (see the callers).
    let mut out = unsafe { Tensor::uninitialized::<f32>(out_shape)? };
    {
        let mut out_view = out.try_as_plain_ram_mut()?;
        compute(view.as_slice::<f32>()?, out_view.as_slice_mut::<f32>()?);
    }
    Ok(tvec!(out.into_tvalue()))
}
