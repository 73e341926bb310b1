#!/usr/bin/env python3
"""The Python reference pipeline the engine is held to: PIL decode + numpy preprocessing +
onnxruntime, driven by the same model spec (TOML) as the Rust engine.

  reference.py tensors SPEC TENSORS.f32 COUNT OUT.json [--model FILE]
      onnxruntime on tensors the engine prepared (COUNT images, raw little-endian f32, back
      to back in the model's input layout) -> JSON list of vectors.
  reference.py images SPEC OUT.json IMAGE... [--model FILE]
      the full reference pipeline on image files -> JSON list of vectors, in argument order.

The embedding tensor is resolved from the spec exactly as the engine does (by tensor name,
node name, or structurally) and added as a graph output.
"""

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)  # alpha is composited on white, as in the engine


def load_spec(path, model_override=None):
    path = Path(path)
    spec = tomllib.loads(path.read_text())
    spec["file"] = Path(model_override) if model_override else path.parent / spec["file"]
    return spec


def resolve_embedding(graph, emb):
    nodes = list(graph.node)
    if "output" in emb:
        return emb["output"]
    if "node" in emb:
        return next(n.output[0] for n in nodes if n.name == emb["node"])
    if emb["select"] == "input_of_last_gemm":
        return next(n.input[0] for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul"))
    if emb["select"] == "output_of_last_global_average_pool":
        return next(n.output[0] for n in reversed(nodes) if n.op_type == "GlobalAveragePool")
    raise SystemExit(f"unknown embedding selector {emb}")


def session(spec, threads=0):
    model = onnx.load(str(spec["file"]))
    tensor = resolve_embedding(model.graph, spec["embedding"])
    if tensor not in [o.name for o in model.graph.output]:
        model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, tensor


def run(sess, tensor, spec, batch):
    out = sess.run([tensor], {spec["input"]["name"]: batch})[0]
    return out.reshape(out.shape[0], -1)


def load_rgb(path, draft_for=None):
    """Decode to upright 8-bit RGB. `draft_for`: let libjpeg decode at reduced DCT scale while
    keeping the shorter side >= this (the benchmarks, and `images --draft`; the parity tests'
    reference decodes fully)."""
    im = Image.open(path)
    if draft_for and im.format == "JPEG":
        w, h = im.size
        short = min(w, h)
        scale = 1
        # The engine's rule: libjpeg's scaled size rounds up (a 1023 px side is 512 at 1/2).
        while scale < 8 and -(-short // (scale * 2)) >= draft_for:
            scale *= 2
        im.draft("RGB", (w // scale, h // scale))
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.uint32)
        im = Image.fromarray(((arr + 128) // 257).clip(0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, BACKGROUND + (255,))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos3": Image.LANCZOS,
}


def preprocess(im, spec):
    p = spec["preprocess"]
    s, cw, ch = p["resize_shorter_to"], p["crop_width"], p["crop_height"]
    w, h = im.size
    nw, nh = (s, s * h // w) if w <= h else (s * w // h, s)
    im = im.resize((nw, nh), FILTERS[p["interpolation"]])
    left, top = round((nw - cw) / 2), round((nh - ch) / 2)  # round half to even, as the engine
    im = im.crop((left, top, left + cw, top + ch))
    arr = np.asarray(im, dtype=np.float32) / np.float32(p["scale"])
    arr = (arr - np.array(p["mean"], np.float32)) / np.array(p["std"], np.float32)
    if spec["input"]["channel_order"] == "bgr":
        arr = arr[:, :, ::-1]
    if spec["input"]["layout"] == "nchw":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tensors")
    t.add_argument("spec")
    t.add_argument("tensors")
    t.add_argument("count", type=int)
    t.add_argument("out")
    t.add_argument("--model")
    i = sub.add_parser("images")
    i.add_argument("spec")
    i.add_argument("out")
    i.add_argument("images", nargs="+")
    i.add_argument("--model")
    i.add_argument("--draft", action="store_true",
                   help="decode JPEGs with PIL's draft() at the engine's margin (shorter side kept >= 2 x the resize target)")
    pr = sub.add_parser("prepare", help="write the preprocessed input tensors, f32 little-endian, one after another")
    pr.add_argument("spec")
    pr.add_argument("out")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--draft", action="store_true", help="as for images")
    a = ap.parse_args()

    spec = load_spec(a.spec, getattr(a, "model", None))
    draft_for = 2 * spec["preprocess"]["resize_shorter_to"] if getattr(a, "draft", False) else None
    if a.cmd == "prepare":
        with open(a.out, "wb") as out:
            for p in a.images:
                out.write(preprocess(load_rgb(p, draft_for), spec).astype("<f4").tobytes())
        return
    sess, tensor = session(spec)
    inp = spec["input"]
    if inp["layout"] == "nchw":
        shape = (3, inp["height"], inp["width"])
    else:
        shape = (inp["height"], inp["width"], 3)
    if a.cmd == "tensors":
        data = np.fromfile(a.tensors, dtype="<f4").reshape((a.count,) + shape)
        vectors = [run(sess, tensor, spec, data[k : k + 1])[0] for k in range(a.count)]
    else:
        vectors = [run(sess, tensor, spec, preprocess(load_rgb(p, draft_for), spec)[None])[0]
                   for p in a.images]
    Path(a.out).write_text(json.dumps([v.astype(float).tolist() for v in vectors]))


if __name__ == "__main__":
    sys.exit(main())
