#!/usr/bin/env python3
"""Python side of the engine benchmark: the reference pipeline (PIL + numpy + onnxruntime) on
the same images and spec as `cargo run --release -p embatch-engine --example bench`, which
calls this script and prints both as ratios.

  bench.py SPEC OUT.json --runs N [--model FILE] [--inference-images K] [--no-inference]
           --set NAME A.jpg ... [--set NAME2 B.jpg ...]

Figures (medians over runs): decode+preprocess ms/image on one thread for each set of
images, with PIL's draft() (libjpeg-turbo DCT-scaled decode, the fastest PIL path) at
the engine's margin (decoded shorter side >= 2 x resize target) and at 1 x, and without; onnxruntime images/s on one thread (batch 1) and on all cores (one session,
intra-op threads = cores, batch 1 and batch 8).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import reference  # noqa: E402


def time_prepare(paths, spec, runs, draft):
    per_run = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for p in paths:
            reference.preprocess(
                reference.load_rgb(p, draft_for=draft * spec["preprocess"]["resize_shorter_to"]),
                spec,
            )
        per_run.append((time.perf_counter() - t0) * 1000 / len(paths))
    return statistics.median(per_run)


def time_infer(sess, tensor, spec, x, batch, runs):
    n = x.shape[0]
    reference.run(sess, tensor, spec, x[:batch])  # warm-up
    per_run = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for k in range(0, n - batch + 1, batch):
            reference.run(sess, tensor, spec, x[k : k + batch])
        per_run.append((n // batch * batch) / (time.perf_counter() - t0))
    return statistics.median(per_run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("out")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model")
    ap.add_argument("--inference-images", type=int, default=16)
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--no-prepare", action="store_true", help="inference figures only")
    ap.add_argument("--set", nargs="+", action="append", default=[], metavar=("NAME", "JPEG"))
    a = ap.parse_args()
    spec = reference.load_spec(a.spec, a.model)
    res = {}
    sets = {s[0]: s[1:] for s in a.set}
    for label, paths in sets.items():
        if paths and not a.no_prepare:
            # draft(): shorter side kept >= 2 x the resize target, the engine's rule (the
            # parity bar on real photos needs it); draft1x: >= 1 x, PIL's usual use.
            res[f"prepare_ms_{label}_draft"] = time_prepare(paths, spec, a.runs, draft=2)
            res[f"prepare_ms_{label}_draft1x"] = time_prepare(paths, spec, a.runs, draft=1)
            res[f"prepare_ms_{label}_full"] = time_prepare(paths, spec, a.runs, draft=0)
    if a.no_inference:
        Path(a.out).write_text(json.dumps(res, indent=1))
        return
    paths = [p for ps in sets.values() for p in ps][:1] or sys.exit("no images")
    one = reference.preprocess(reference.load_rgb(paths[0]), spec)
    rng = np.random.default_rng(0)
    x = np.stack([one + rng.normal(0, 0.01, one.shape).astype(np.float32) for _ in range(a.inference_images)])
    cores = os.cpu_count() or 1
    sess1, tensor = reference.session(spec, threads=1)
    res["infer_img_s_1thread"] = time_infer(sess1, tensor, spec, x, 1, a.runs)
    sessn, _ = reference.session(spec, threads=cores)
    res["infer_img_s_all_cores_batch1"] = time_infer(sessn, tensor, spec, x, 1, a.runs)
    res["infer_img_s_all_cores_batch8"] = time_infer(sessn, tensor, spec, x, 8, a.runs)
    res["cores"] = cores
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
