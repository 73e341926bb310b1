#!/usr/bin/env python3
"""Generate the test model: a ResNet18 v2 architecture ONNX with deterministic random weights.

Usage: make_resnet18.py OUT_DIR

Writes OUT_DIR/resnet18-test.onnx and OUT_DIR/resnet18-test.toml (its model spec, with the
file's real sha256). The graph has the shape of `resnet18-v2-7.onnx` from the ONNX model zoo
(MXNet Gluon `resnet18_v2`, opset 7): a data BatchNorm, 7x7/2 conv, BN, ReLU, 3x3/2 max pool,
four stages of two pre-activation basic blocks (64, 128, 256, 512 channels), BN, ReLU,
GlobalAveragePool, Flatten, Gemm to 1000 classes. Input `data` is [N,3,224,224] with a
symbolic batch dimension N. The embedding is the 512-d input of the final Gemm.

Same seed, same pinned numpy/onnx -> byte-identical file. Nothing is downloaded.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240518
OPSET = 7


class Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.count = 0

    def name(self, kind):
        self.count += 1
        return f"resnetv22_{kind}{self.count}"

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, x, cin, cout, k, stride, pad):
        n = self.name("conv")
        fan_in = cin * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(cout, cin, k, k))
        self.init(n + "_weight", w)
        out = n + "_fwd"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, n + "_weight"],
                [out],
                name=out,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        return out

    def bn(self, x, c, beta_std=0.1, plain=False):
        n = self.name("batchnorm")
        if plain:  # Gluon's input BN: scale=False, center=False
            gamma, beta = np.ones(c), np.zeros(c)
        else:
            gamma = self.rng.uniform(0.8, 1.2, size=c)
            beta = self.rng.normal(0.0, beta_std, size=c)
        mean = self.rng.normal(0.0, 0.05, size=c)
        var = self.rng.uniform(0.9, 1.1, size=c)
        names = [self.init(f"{n}_{p}", a) for p, a in
                 (("gamma", gamma), ("beta", beta), ("running_mean", mean), ("running_var", var))]
        out = n + "_fwd"
        self.nodes.append(
            helper.make_node("BatchNormalization", [x, *names], [out], name=out, epsilon=1e-5)
        )
        return out

    def relu(self, x):
        out = self.name("relu") + "_fwd"
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    def add(self, a, b):
        out = self.name("plus") + "_fwd"
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return out

    def block(self, x, cin, cout, stride, downsample):
        residual = x
        x = self.relu(self.bn(x, cin))
        if downsample:
            residual = self.conv(x, cin, cout, 1, stride, 0)
        x = self.conv(x, cin, cout, 3, stride, 1)
        x = self.relu(self.bn(x, cout))
        x = self.conv(x, cout, cout, 3, 1, 1)
        return self.add(x, residual)


def build():
    b = Builder(SEED)
    x = b.bn("data", 3, plain=True)
    x = b.conv(x, 3, 64, 7, 2, 3)
    x = b.relu(b.bn(x, 64))
    pool = "resnetv22_pool0_fwd"
    b.nodes.append(
        helper.make_node("MaxPool", [x], [pool], name=pool, kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1])
    )
    x, cin = pool, 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = b.block(x, cin, cout, stride, downsample=(cin != cout))
        x = b.block(x, cout, cout, 1, downsample=False)
        cin = cout
    # A wider spread of the final BN shift makes the ReLU pattern, hence the pooled vector,
    # differ more between images: parity tests then tell images apart.
    x = b.relu(b.bn(x, 512, beta_std=1.0))
    gap = "resnetv22_pool1_fwd"
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [gap], name=gap))
    flat = "flatten_170"
    b.nodes.append(helper.make_node("Flatten", [gap], [flat], name=flat, axis=1))
    w = b.rng.normal(0.0, np.sqrt(1.0 / 512), size=(1000, 512))
    b.init("resnetv22_dense0_weight", w)
    b.init("resnetv22_dense0_bias", np.zeros(1000))
    dense = "resnetv22_dense0_fwd"
    b.nodes.append(
        helper.make_node("Gemm", [flat, "resnetv22_dense0_weight", "resnetv22_dense0_bias"], [dense],
                         name=dense, alpha=1.0, beta=1.0, transA=0, transB=1)
    )
    graph = helper.make_graph(
        b.nodes,
        "resnet18_v2_random",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(dense, TensorProto.FLOAT, ["N", 1000])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="embatch-testgen"
    )
    model.ir_version = 4
    onnx.checker.check_model(model)
    return model


SPEC = """\
# Generated by models/testgen/make_resnet18.py: ResNet18 v2 architecture, deterministic random
# weights. For tests only; its vectors carry no meaning.
name = "resnet18-v2-random"
source_url = "generated:models/testgen/make_resnet18.py"
sha256 = "{sha}"
file = "resnet18-test.onnx"

[input]
name = "data"
width = 224
height = 224
channel_order = "rgb"
layout = "nchw"

[preprocess]
resize_shorter_to = 256
crop_width = 224
crop_height = 224
interpolation = "bilinear"
scale = 255.0
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[embedding]
select = "input_of_last_gemm"
dimension = 512
"""


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_resnet18.py OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    data = build().SerializeToString()
    (out / "resnet18-test.onnx").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    (out / "resnet18-test.toml").write_text(SPEC.format(sha=sha))
    print(out / "resnet18-test.toml")


if __name__ == "__main__":
    main()
