"""Worker benchmark: embatch-worker vs a sample-style Python worker, and peak RSS vs manifest size.

Starts its own moto server on 127.0.0.1, uploads generated images, and runs, interleaved and
`--runs` times each, on the same images:
  - the real `embatch-worker` binary, with the environment AWS Batch would set (plus thread
    variants, to see whether decode starves inference on this 2-core machine);
  - worker/bench/sample_worker.py (sequential S3 get, PIL, onnxruntime, one PutItem per image).
Each run writes to a fresh table. Wall time is from process start to exit (model load included);
peak RSS is the command's ru_maxrss (os.wait4, from a small launcher: see run_timed). Then the worker alone on manifests of
`--rss-sizes` tiny images, for peak RSS against manifest length.

Run through worker/bench/run.sh, which builds the release binary first.
"""

import argparse
import concurrent.futures
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from glob import glob

import boto3
import numpy as np
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORKER = os.path.join(ROOT, "target", "release", "embatch-worker")
SAMPLE = os.path.join(ROOT, "worker", "bench", "sample_worker.py")
RUN_ID = "20260101T000000Z-be4c40"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("moto did not start")
            time.sleep(0.1)


def photo(seed, width, height):
    """A photo-like JPEG: smooth gradients, a few shapes, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 90 * np.sin(a * x / 60 + b * y / 45 + p * 6)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, height / 3)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def upload(s3, bucket, objects):
    """Uploads (key, bytes) pairs; returns manifest lines in order."""

    def put(item):
        key, data = item
        etag = s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')
        return {"bucket": bucket, "key": key, "size": len(data), "etag": etag, "image_id": key}

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(put, objects))


def run_root(bucket):
    return f"s3://{bucket}/embatch-runs/{RUN_ID}/"


def put_manifest(s3, bucket, n, lines):
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    s3.put_object(Bucket=bucket, Key=f"embatch-runs/{RUN_ID}/manifests/{n}.jsonl", Body=body)
    return f"{run_root(bucket)}manifests/{n}.jsonl"


def new_table(ddb, name):
    ddb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "ImageId", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "ImageId", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.get_waiter("table_exists").wait(TableName=name)
    return name


# Linux starts a child's ru_maxrss at its parent's RSS when it was forked (kept across exec):
# forked from this process, which holds the images, a small worker would report our size. So
# the command is forked from a small launcher, which reports the command's own peak.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_timed(cmd, env):
    """Runs cmd; returns (wall seconds, peak RSS in MiB, stderr text)."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", LAUNCHER, rss.name, *cmd], env=env,
                              stdout=subprocess.DEVNULL, stderr=err)
        seconds = time.monotonic() - started
        err.seek(0)
        text = err.read().decode(errors="replace")
        peak_kib = int(rss.read() or 0)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited {proc.returncode}:\n{text[-3000:]}")
    return seconds, peak_kib / 1024, text


def worker_summary(stderr):
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("message") == "summary":
            return event
    raise SystemExit("no summary line in the worker's log")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="images in the throughput set (generated JPEGs)")
    parser.add_argument("--size", default="640x480", help="size of the generated JPEGs, WxH (e.g. 4000x3000)")
    parser.add_argument("--photos", default=None,
                        help="a directory of real JPEGs (searched recursively) instead of generated ones; "
                             "--images of them, cycling if there are fewer")
    parser.add_argument("--min-pixels", type=float, default=0,
                        help="with --photos: only photos of at least this many megapixels")
    parser.add_argument("--variants", action="store_true",
                        help="also run the worker with --decode-threads 1 and --infer-threads 1")
    parser.add_argument("--im2col", action="store_true",
                        help="also run the worker with --conv im2col (tract's own convolutions, no Winograd)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-sizes", default="1000,20000", help="manifest sizes for peak RSS ('' to skip)")
    parser.add_argument("--model-spec", default=None)
    args = parser.parse_args()

    spec = args.model_spec or (sorted(glob(os.path.join(ROOT, "target/test-models/resnet18-*/resnet18-test.toml"))) or [None])[0]
    if spec is None:
        out = os.path.join(ROOT, "target", "bench-model")
        subprocess.run([sys.executable, os.path.join(ROOT, "models/testgen/make_resnet18.py"), out], check=True)
        spec = os.path.join(out, "resnet18-test.toml")

    moto, endpoint = start_moto()
    try:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        os.environ.update(env)
        s3 = boto3.client("s3")
        ddb = boto3.client("dynamodb")
        bucket = "bench-images"
        s3.create_bucket(Bucket=bucket)

        if args.runs == 0:
            args.images = 0
        objects, args.described = throughput_set(args)
        print(f"uploading {args.described} ...", file=sys.stderr)
        lines = upload(s3, bucket, objects)
        manifest = put_manifest(s3, bucket, 0, lines)

        def worker_env(n, table):
            return dict(
                env,
                EMBATCH_RUN_ID=RUN_ID,
                EMBATCH_RUN_URI=run_root(bucket),
                EMBATCH_MANIFEST_OFFSET="0",
                AWS_BATCH_JOB_ARRAY_INDEX=str(n),
                AWS_BATCH_JOB_ID=f"bench:{n}",
                EMBATCH_TABLE=table,
                EMBATCH_MODEL_SPEC=spec,
            )

        variants = {"worker": []}
        if args.variants:
            variants["worker --decode-threads 1"] = ["--decode-threads", "1"]
            variants["worker --infer-threads 1"] = ["--infer-threads", "1"]
        if args.im2col:
            variants["worker --conv im2col"] = ["--conv", "im2col"]
        results = {name: [] for name in list(variants) + ["sample"]}
        stages = []
        table_no = 0
        for run in range(args.runs):
            for name, flags in variants.items():
                table_no += 1
                table = new_table(ddb, f"bench-{table_no}")
                seconds, rss, text = run_timed([WORKER, *flags], worker_env(0, table))
                summary = worker_summary(text)
                assert summary["written"] == args.images, summary
                results[name].append((seconds, rss))
                if name == "worker":
                    stages.append(summary)
                print(f"run {run + 1} {name}: {seconds:.1f} s, {args.images / seconds:.1f} img/s, peak RSS {rss:.0f} MiB", file=sys.stderr)
            table_no += 1
            table = new_table(ddb, f"bench-{table_no}")
            seconds, rss, text = run_timed(
                [sys.executable, SAMPLE, "--manifest", manifest, "--table", table, "--model-spec", spec], env
            )
            results["sample"].append((seconds, rss))
            print(f"run {run + 1} sample: {seconds:.1f} s, {args.images / seconds:.1f} img/s, peak RSS {rss:.0f} MiB", file=sys.stderr)

        if args.runs > 0:
            print_throughput(args, results)
            keys = ["fetch_s", "decode_s", "infer_s", "write_s", "seconds"]
            med = {k: statistics.median(s[k] for s in stages) for k in keys}
            print(
                "\nworker (default) busy seconds per stage, summed over parallel workers (median): "
                + ", ".join(f"{k[:-2] if k != 'seconds' else 'wall'} {med[k]:.1f}" for k in keys)
            )
        rss_table(args, s3, ddb, bucket, worker_env, table_no)
    finally:
        moto.terminate()
        moto.wait()


def throughput_set(args):
    """(key, bytes) pairs of the throughput set, and how to describe it."""
    if args.photos:
        found = sorted(p for p in glob(os.path.join(args.photos, "**", "*"), recursive=True)
                       if p.lower().endswith((".jpg", ".jpeg")))
        keep = []
        for p in found:
            with Image.open(p) as im:
                if im.width * im.height >= args.min_pixels * 1e6:
                    keep.append((p, im.width * im.height))
        if not keep:
            raise SystemExit(f"no JPEGs of at least {args.min_pixels} Mpixel under {args.photos}")
        data = [open(p, "rb").read() for p, _ in keep]
        mp = sorted(px / 1e6 for _, px in keep)
        objects = [(f"photos/{i:05}.jpg", data[i % len(data)]) for i in range(args.images)]
        return objects, (f"{args.images} real JPEGs ({len(keep)} distinct photos of "
                         f"{mp[0]:.1f}-{mp[-1]:.1f} Mpixel from {args.photos})")
    w, h = (int(v) for v in args.size.split("x"))
    objects = [(f"photos/{i:05}.jpg", photo(i, w, h)) for i in range(args.images)]
    return objects, f"{args.images} generated {w}x{h} JPEGs"


def print_throughput(args, results):
    print(f"\n### Throughput: {args.described}, medians of {args.runs} runs\n")
    print("| worker | wall s (median) | images/s | vs sample | peak RSS MiB |")
    print("|---|---|---|---|---|")
    sample_s = statistics.median(s for s, _ in results["sample"])
    for name, runs in results.items():
        median_s = statistics.median(s for s, _ in runs)
        rss = statistics.median(r for _, r in runs)
        print(f"| {name} | {median_s:.1f} | {args.images / median_s:.1f} | {sample_s / median_s:.2f}x | {rss:.0f} |")


def rss_table(args, s3, ddb, bucket, worker_env, table_no):
    sizes = [int(n) for n in args.rss_sizes.split(",") if n]
    if not sizes:
        return
    tiles = [photo(10_000 + i, 64, 48) for i in range(100)]
    print("\n### Peak RSS against manifest length (64x48 JPEGs)\n")
    print("| images | wall s | images/s | peak RSS MiB |")
    print("|---|---|---|---|")
    lines = []  # manifests share the images: each size uploads only the ones it adds
    for n, size in enumerate(sizes, start=1):
        print(f"uploading up to {size} 64x48 JPEGs ...", file=sys.stderr)
        lines += upload(s3, bucket, [(f"rss/{i:06}.jpg", tiles[i % len(tiles)]) for i in range(len(lines), size)])
        put_manifest(s3, bucket, n, lines[:size])
        table_no += 1
        table = new_table(ddb, f"bench-{table_no}")
        seconds, rss, text = run_timed([WORKER], worker_env(n, table))
        assert worker_summary(text)["written"] == size
        print(f"| {size} | {seconds:.1f} | {size / seconds:.1f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
