"""Runs the built worker image the way AWS Batch would, against the emulator: creates the
CloudFormation stack in moto, submits a run with `embatch submit` against the stack's outputs,
and starts the container once per array child with the job's environment (docker/build-and-run
calls this after building the image).

The model is the generated test model, mounted read-only at /models (the real ResNet18 cannot
be downloaded here). Also checks: the container runs as a non-root user, and refuses a model
whose sha256 does not match its spec (exit 2, the "do not retry" code).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy"))

from emulated_stack import (CREDENTIALS, ROOT, Child, Failed, check, clients,  # noqa: E402
                            create_network, create_stack, end_to_end, make_images, moto_server,
                            test_model_spec)

MODEL_MOUNT = "/models"


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "--runtime", "runc", *args], text=True, capture_output=True, **kwargs)


def container_worker(image: str, url: str, model_dir: Path):
    """Starts the image for a child: only the child's environment, the emulator endpoint and
    test credentials; the model directory mounted read-only; a read-only root file system with
    a /tmp tmpfs, as the job definition configures."""

    def run(child: Child) -> subprocess.CompletedProcess:
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL": url, **child.env}
        flags = [f"--env={k}={v}" for k, v in env.items()]
        return podman("run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
                      "--volume", f"{model_dir}:{MODEL_MOUNT}:ro", *flags, image, timeout=900)

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("image", help="the worker image to run, e.g. localhost/embatch-worker:ci")
    args = ap.parse_args()

    spec = test_model_spec()
    model_dir = spec.parent

    user = podman("run", "--rm", "--entrypoint", "id", args.image)
    check(user.returncode == 0 and user.stdout.startswith("uid=10001(embatch)"),
          f"container runs as a non-root user: {user.stdout.strip() or user.stderr.strip()}")
    version = podman("run", "--rm", args.image, "--version")
    check(version.returncode == 0, f"entrypoint is the worker: {version.stdout.strip()}")

    with moto_server() as url:
        c = clients(url)
        print(f"moto on {url}")
        subnet, sg, service_role = create_network(c)
        out = create_stack(c, subnet, sg, service_role, "images/")
        print("end to end: the container per array child, against the stack's outputs:")
        end_to_end(c, url, out, container_worker(args.image, url, model_dir),
                   model_spec=f"{MODEL_MOUNT}/{spec.name}")

        # A model whose bytes do not match its spec: the worker must refuse it (exit 2).
        tampered = ROOT / "target" / "test-models" / "tampered"
        shutil.rmtree(tampered, ignore_errors=True)
        shutil.copytree(model_dir, tampered)
        onnx = next(tampered.glob("*.onnx"))
        data = bytearray(onnx.read_bytes())
        data[-1] ^= 0xFF
        onnx.write_bytes(bytes(data))
        # A valid one-image manifest, so that the model is the only thing wrong.
        run_id = "20260101T000000Z-000000"
        bucket = out["BucketName"]
        key = "images/tamper-check.jpg"
        c["s3"].put_object(Bucket=bucket, Key=key, Body=make_images(1)["img-000.png"])
        head = c["s3"].head_object(Bucket=bucket, Key=key)
        line = {"bucket": bucket, "key": key, "size": head["ContentLength"],
                "etag": head["ETag"].strip('"'), "image_id": key}
        run_key = out["RunRoot"].split("/", 3)[3] + run_id + "/"
        c["s3"].put_object(Bucket=bucket, Key=run_key + "manifests/0.jsonl",
                           Body=(json.dumps(line) + "\n").encode())
        kid = Child("tampered-model-check", None, {
            "AWS_REGION": out["Region"], "EMBATCH_TABLE": out["TableName"],
            "EMBATCH_RUN_ID": run_id,
            "EMBATCH_RUN_URI": f"{out['RunRoot']}{run_id}/",
            "EMBATCH_MANIFEST_OFFSET": "0", "EMBATCH_MODEL_SPEC": f"{MODEL_MOUNT}/{spec.name}",
            "AWS_BATCH_JOB_ID": "tampered-model-check"})
        done = container_worker(args.image, url, tampered)(kid)
        check(done.returncode == 2 and "sha256" in done.stderr,
              f"a model with a wrong sha256 is refused with exit 2: {done.returncode}, "
              f"{(done.stderr.strip().splitlines() or [''])[-1][:200]}")
        shutil.rmtree(tampered, ignore_errors=True)
    print("docker/container_run: passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        print(f"docker/container_run: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
