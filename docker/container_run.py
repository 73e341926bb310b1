"""Runs the built worker image the way AWS Batch would, against the emulator: creates the
CloudFormation stack in moto, submits a run with `embatch submit` against the stack's outputs,
and starts the container once per array child with the job's environment (docker/build-and-run
calls this after building the image).

The model is the generated test model, mounted read-only at /models (the real ResNet18 cannot
be downloaded here). Also checks: the container runs as a non-root user, and refuses a model
whose sha256 does not match its spec (exit 2, the "do not retry" code).

Security checks: every worker run has a read-only root file system (podman --read-only, as the
job definition's ReadonlyRootFilesystem, without podman's own tmpfs on /run, /tmp and /var/tmp,
which Batch does not add; /tmp is a tmpfs, as the job definition configures: the worker keeps
its failure report in a temporary file, and exits 75 without a writable /tmp) and still
succeeds; the
image's configuration carries no AWS_* environment variables; and the output of every container
run holds neither the credentials passed in (random per run, in the shape of real ones: an
AKIA... key id, a 40-character secret, a session token) nor a signature, a signed URL's
credential or an Authorization header.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import string
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy"))

from emulated_stack import (CREDENTIALS, ROOT, Child, check, clients, run_checks,  # noqa: E402
                            create_network, create_stack, end_to_end, make_images, moto_server,
                            test_model_spec)

MODEL_MOUNT = "/models"
# The emulator accepts any credentials: the container gets its own, made up for this run and
# shaped like real ones, so that finding them in its output means something. (The host-side
# clients keep emulated_stack's "testing".)
_UPPER = string.ascii_uppercase + string.digits
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIA" + "".join(secrets.choice(_UPPER) for _ in range(16)),
    "AWS_SECRET_ACCESS_KEY": "".join(secrets.choice(string.ascii_letters + string.digits + "/+")
                                     for _ in range(40)),
    "AWS_SESSION_TOKEN": "FwoG" + secrets.token_urlsafe(96),
}
assert set(CREDENTIALS) <= set(FAKE_CREDENTIALS)
# What must never appear in a container's output: the credential values, and the parts of a
# signed request (a presigned URL's query, or the signed headers).
LEAK_MARKERS = re.compile(r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Authorization:",
                          re.IGNORECASE)
# Every container run: (what, podman arguments, result), for the output checks at the end.
RUNS: list[tuple[str, list[str], subprocess.CompletedProcess]] = []


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "--runtime", "runc", *args], text=True, capture_output=True, **kwargs)


def container(what: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """`podman run --rm ARGS`, recorded in RUNS."""
    argv = ["run", "--rm", *args]
    done = podman(*argv, **kwargs)
    RUNS.append((what, argv, done))
    return done


# As the job definition: ReadonlyRootFilesystem, and a /tmp tmpfs (the worker's failure report
# is a temporary file: worker/src/accounting.rs). podman --read-only alone would also mount
# tmpfs on /run, /tmp and /var/tmp (--read-only-tmpfs, default true); AWS Batch mounts only
# what the job definition lists.
READ_ONLY = ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp")


def container_worker(image: str, url: str, model_dir: Path):
    """Starts the image for a child: only the child's environment, the emulator endpoint and
    this run's made-up credentials; the model directory mounted read-only; a read-only root
    file system with a /tmp tmpfs, as the job definition configures."""

    def run(child: Child) -> subprocess.CompletedProcess:
        env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": url, **child.env}
        flags = [f"--env={k}={v}" for k, v in env.items()]
        return container(f"worker {child.job_id}", "--network", "host", *READ_ONLY,
                         "--volume", f"{model_dir}:{MODEL_MOUNT}:ro", *flags, image, timeout=900)

    return run


def check_image_config(image: str) -> None:
    """The image's own environment: no AWS_* variable (credentials come from the job's role)."""
    done = podman("image", "inspect", "--format", "{{json .Config.Env}}", image)
    check(done.returncode == 0, f"podman image inspect {image}")
    names = [e.split("=", 1)[0] for e in (json.loads(done.stdout) or [])]
    aws = [n for n in names if n.upper().startswith("AWS_")]
    check(not aws, f"the image's environment holds no AWS_* variable: {', '.join(names)}")


def check_read_only(image: str) -> None:
    """The worker's flags make the root file system read-only, and leave only /tmp writable."""
    # As root, so that only the read-only mount (not file permissions) can refuse the writes.
    dirs = ["/", "/var/tmp", "/run", "/usr/local/bin"]
    root = container("write probe /", *READ_ONLY, "--user", "0", "--entrypoint", "/bin/sh", image,
                     "-c", " ; ".join(f"touch {d.rstrip('/')}/probe" for d in dirs))
    refused = root.stderr.count("Read-only file system")
    check(refused == len(dirs), f"--read-only: writing {', '.join(dirs)} fails "
          f"({refused} of {len(dirs)}: Read-only file system)")
    tmp = container("write probe /tmp", *READ_ONLY, "--entrypoint", "/bin/sh", image, "-c",
                    "touch /tmp/probe && rm /tmp/probe")
    check(tmp.returncode == 0, f"--tmpfs /tmp: /tmp is writable for the worker's user"
          + (f": {tmp.stderr.strip()[:120]}" if tmp.returncode else ""))


def check_outputs() -> None:
    """No container run printed a credential value or a part of a signed request."""
    workers = [r for r in RUNS if r[0].startswith("worker ")]
    check(all(all(f in argv for f in READ_ONLY) for _, argv, _ in workers),
          f"all {len(workers)} worker runs had a read-only root file system ({' '.join(READ_ONLY)})")
    values = FAKE_CREDENTIALS
    leaks, chars = [], 0
    for what, _, done in RUNS:
        for stream, text in (("stdout", done.stdout or ""), ("stderr", done.stderr or "")):
            chars += len(text)
            leaks += [f"{what} {stream}: the {k} value" for k, v in values.items() if v in text]
            leaks += [f"{what} {stream}: {m.group(0)!r}" for m in LEAK_MARKERS.finditer(text)]
    check(not leaks, f"{len(RUNS)} container runs' output ({chars} characters of stdout+stderr) "
          f"holds no credential value ({', '.join(values)}) and no {LEAK_MARKERS.pattern.replace('|', ', ')}"
          + (f": {leaks[:5]}" if leaks else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("image", help="the worker image to run, e.g. localhost/embatch-worker:ci")
    args = ap.parse_args()

    spec = test_model_spec()
    model_dir = spec.parent

    check_image_config(args.image)
    user = container("id", "--entrypoint", "id", args.image)
    check(user.returncode == 0 and user.stdout.startswith("uid=10001(embatch)"),
          f"container runs as a non-root user: {user.stdout.strip() or user.stderr.strip()}")
    version = container("--version", args.image, "--version")
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
    check_read_only(args.image)
    check_outputs()


if __name__ == "__main__":
    run_checks(main, "docker/container_run")
