"""The reference for the worker benchmark: a worker written like the original AWS sample.

One image at a time, in order: S3 GetObject, PIL decode + preprocess, the same ONNX model in
onnxruntime (default session options, batch 1), one DynamoDB PutItem per image with the
sample's item shape (ImageId, Vector, Dimension, DataType, Created). It reads the same
manifest (JSON Lines) and model spec as embatch-worker, so both do the same work.

    .venv/bin/python worker/bench/sample_worker.py --manifest s3://b/run/manifests/0.jsonl \
        --table vectors --model-spec target/test-models/.../resnet18-test.toml

Endpoint, region and credentials come from the environment (AWS_ENDPOINT_URL, ...).
"""

import argparse
import datetime
import io
import json
import os
import sys
import time
import tomllib

import boto3
import numpy as np
import onnx
import onnxruntime
from PIL import Image


def load_model(spec_path):
    """An onnxruntime session whose first output is the spec's embedding tensor."""
    with open(spec_path, "rb") as f:
        spec = tomllib.load(f)
    model_path = os.path.join(os.path.dirname(os.path.abspath(spec_path)), spec["file"])
    model = onnx.load(model_path)
    select = spec["embedding"]["select"]
    if select == "input_of_last_gemm":
        gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
        tensor = gemm.input[0]
    elif select.startswith("output:"):
        tensor = select.split(":", 1)[1]
    else:
        raise SystemExit(f"unsupported embedding selector {select!r} in {spec_path}")
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return spec, session


def preprocess(data, spec):
    pre = spec["preprocess"]
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    short = pre["resize_shorter_to"]
    if w < h:
        size = (short, max(1, round(h * short / w)))
    else:
        size = (max(1, round(w * short / h)), short)
    img = img.resize(size, Image.BILINEAR)
    cw, ch = pre["crop_width"], pre["crop_height"]
    left, top = (size[0] - cw) // 2, (size[1] - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    x = np.asarray(img, dtype=np.float32) / pre["scale"]
    x = (x - np.array(pre["mean"], dtype=np.float32)) / np.array(pre["std"], dtype=np.float32)
    return x.transpose(2, 0, 1)[np.newaxis, ...]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="s3://bucket/key of the manifest")
    parser.add_argument("--table", required=True)
    parser.add_argument("--model-spec", required=True)
    args = parser.parse_args()

    bucket, key = args.manifest[len("s3://"):].split("/", 1)
    s3 = boto3.client("s3")
    table = boto3.resource("dynamodb").Table(args.table)
    spec, session = load_model(args.model_spec)
    input_name = spec["input"]["name"]

    manifest = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    done = 0
    started = time.monotonic()
    for line in manifest.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        data = s3.get_object(Bucket=entry["bucket"], Key=entry["key"])["Body"].read()
        vector = session.run(None, {input_name: preprocess(data, spec)})[0].reshape(-1)
        table.put_item(
            Item={
                "ImageId": entry["image_id"],
                "Vector": vector.astype("<f4").tobytes(),
                "Dimension": vector.shape[0],
                "DataType": "float32",
                "Created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            }
        )
        done += 1
    seconds = time.monotonic() - started
    print(json.dumps({"images": done, "seconds": seconds}), file=sys.stderr)


if __name__ == "__main__":
    main()
