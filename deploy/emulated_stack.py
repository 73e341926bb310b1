"""The emulated deployment shared by deploy/test-stack and docker/build-and-run: a moto server
on a free 127.0.0.1 port, the CloudFormation stack created in it, and an end-to-end run against
the stack's outputs (images uploaded, `embatch submit`, every array child run the way AWS Batch
would run it, vectors and reports read back).

moto never runs a job (Batch `use_docker` is off): every submitted job is SUCCEEDED inside
SubmitJob. The children to start, with the environment AWS Batch would set (the job
definition's environment, the submitter's container overrides, AWS_BATCH_JOB_ID and
AWS_BATCH_JOB_ARRAY_INDEX), come from the Rust Batch player's `batch-children` binary; the
caller starts each one (a process, or a container).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import boto3

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEMPLATE = HERE / "cloudformation" / "embatch.yaml"
REGION = "us-east-1"
STACK = "embatch-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class Failed(Exception):
    """A check failed; the message says which."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)
    print(f"  ok  {what}", flush=True)


def run_checks(main: Callable[[], None], name: str) -> None:
    """Runs a check script's `main`: exit 0 and "passed" when every check passes, 1 and the
    failed check's message otherwise."""
    try:
        main()
    except Failed as e:
        print(f"{name}: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: passed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server():
    """A moto server on a free 127.0.0.1 port; yields its endpoint URL."""
    port = free_port()
    (ROOT / "target").mkdir(exist_ok=True)
    log_path = ROOT / "target" / f"moto-{os.getpid()}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise Failed(f"moto server exited with {proc.returncode}; see {log_path}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise Failed(f"moto server on {url} not ready after 30 s")
                time.sleep(0.1)  # readiness poll of a child process, not test synchronisation
        req = urllib.request.Request(
            f"{url}/moto-api/config", method="POST",
            data=json.dumps({"batch": {"use_docker": False}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=5).read()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        log_path.unlink(missing_ok=True)


def load_template() -> dict:
    """The template as data; CloudFormation's short-form tags (!Ref, !Sub, ...) kept opaque."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, tag, node: None)
    return yaml.load(TEMPLATE.read_text(), Loader=Loader)


def clients(url: str) -> dict:
    session = boto3.Session(aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=REGION)
    names = ["cloudformation", "ec2", "iam", "s3", "dynamodb", "batch", "ecr", "logs", "sts"]
    return {n: session.client(n, endpoint_url=url) for n in names}


def create_network(c: dict) -> tuple[str, str, str]:
    """The user's VPC pieces, and a Batch service role (moto crashes without ServiceRole)."""
    vpc = c["ec2"].create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = c["ec2"].create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    sg = c["ec2"].create_security_group(GroupName="embatch-batch", Description="batch",
                                        VpcId=vpc)["GroupId"]
    role = c["iam"].create_role(
        RoleName="embatch-test-batch-service",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"},
            "Action": "sts:AssumeRole"}]}),
    )["Role"]["Arn"]
    return subnet, sg, role


def create_stack(c: dict, subnet: str, sg: str, service_role: str, prefixes: str,
                 extra: dict[str, str] | None = None) -> dict:
    """Creates the stack (the network given, `extra` parameters besides); returns its outputs."""
    cfn = c["cloudformation"]
    cfn.create_stack(
        StackName=STACK,
        TemplateBody=TEMPLATE.read_text(),
        Capabilities=["CAPABILITY_NAMED_IAM"],
        Parameters=[
            {"ParameterKey": "SubnetIds", "ParameterValue": subnet},
            {"ParameterKey": "SecurityGroupIds", "ParameterValue": sg},
            {"ParameterKey": "BatchServiceRoleArn", "ParameterValue": service_role},
            {"ParameterKey": "ImagePrefixes", "ParameterValue": prefixes},
            # moto does not split the *default* of a list parameter: pass every list explicitly.
            {"ParameterKey": "InstanceTypes", "ParameterValue": "c7i,c6i,c6a,c5"},
        ] + [{"ParameterKey": k, "ParameterValue": v} for k, v in (extra or {}).items()],
    )
    cfn.get_waiter("stack_create_complete").wait(
        StackName=STACK, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    stack = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    check(stack["StackStatus"] == "CREATE_COMPLETE", f"stack {STACK} is CREATE_COMPLETE")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}




# ---------------------------------------------------------------- end-to-end run

def test_model_spec() -> Path:
    """The generated ResNet18-architecture test model (models/testgen), made once into
    target/test-models/container/; returns its spec path."""
    out = ROOT / "target" / "test-models" / "container"
    spec = out / "resnet18-test.toml"
    if not spec.is_file():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(ROOT / "models" / "testgen" / "make_resnet18.py"), str(out)],
                       check=True)
    return spec


def make_images(count: int, seed: int = 7) -> dict[str, bytes]:
    """`count` small photos-to-be (random JPEG/PNG of varied sizes) and one corrupt JPEG,
    keyed by file name."""
    from PIL import Image
    import numpy as np

    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    images = {}
    for i in range(count):
        w, h = rng.randint(64, 640), rng.randint(64, 480)
        pixels = nprng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        fmt = "JPEG" if i % 3 else "PNG"
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt)
        images[f"img-{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"] = buf.getvalue()
    images["broken.jpg"] = b"\xff\xd8\xff\xe0 this is not a JPEG"
    return images


@dataclass
class Child:
    """One array child (or plain job) to run, with the environment AWS Batch would give it."""
    job_id: str
    index: int | None
    env: dict[str, str]


def submit(url: str, out: dict, paths: list[str], model_spec: str, images_per_job: int) -> dict:
    """`embatch submit` against the stack's outputs; returns its JSON summary."""
    cmd = [str(ROOT / "target" / "release" / "embatch"), "submit",
           "--bucket", out["BucketName"], "--job-queue", out["JobQueueArn"],
           "--job-definition", out["JobDefinitionName"], "--table", out["TableName"],
           "--model-spec", model_spec, "--images-per-job", str(images_per_job), *paths]
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": url, "AWS_REGION": out["Region"]}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise Failed(f"embatch submit exited {done.returncode}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def status(url: str, out: dict, run_id: str, *flags: str) -> tuple[int, dict]:
    """`embatch status RUN [FLAGS]`: its exit code and JSON."""
    cmd = [str(ROOT / "target" / "release" / "embatch"), "status", run_id,
           "--bucket", out["BucketName"], *flags]
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": url, "AWS_REGION": out["Region"]}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        raise Failed(f"embatch status exited {done.returncode}: {done.stderr.strip()}")


def children(url: str, job_ids: list[str]) -> list[Child]:
    """Every child of the submitted jobs, with the environment AWS Batch would set (the job
    definition's environment overlaid with the job's container overrides, AWS_BATCH_JOB_ID,
    AWS_BATCH_JOB_ARRAY_INDEX), as the Rust Batch player computes it: the `batch-children`
    binary (embatch_localaws::batch::children)."""
    cmd = [str(ROOT / "target" / "release" / "batch-children"), *job_ids]
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": url, "AWS_REGION": REGION}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise Failed(f"batch-children exited {done.returncode}: {done.stderr.strip()}")
    kids = [json.loads(line) for line in done.stdout.splitlines() if line]
    parents = {k["job_id"].split(":")[0] for k in kids}
    check(parents == set(job_ids), f"Batch knows the {len(job_ids)} submitted job(s)")
    return [Child(k["job_id"], k["array_index"], k["env"]) for k in kids]


def vectors(c: dict, table: str) -> dict[str, dict]:
    """Every item of the table, by ImageId."""
    items, kwargs = {}, {}
    while True:
        page = c["dynamodb"].scan(TableName=table, **kwargs)
        for item in page["Items"]:
            items[item["ImageId"]["S"]] = item
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def end_to_end(c: dict, url: str, out: dict, run_child: Callable[[Child], subprocess.CompletedProcess],
               model_spec: str, image_count: int = 7, images_per_job: int = 3) -> None:
    """Upload images, submit against the stack's outputs, run every child with `run_child`,
    then check the table, the reports and `embatch status`."""
    import numpy as np

    bucket = out["BucketName"]
    prefix = out["ImagePrefixes"].split(",")[0]
    images = make_images(image_count)
    for name, body in images.items():
        c["s3"].put_object(Bucket=bucket, Key=prefix + name, Body=body)
    # Not an image by extension: must not be listed into any manifest.
    c["s3"].put_object(Bucket=bucket, Key=prefix + "notes.txt", Body=b"not an image")

    summary = submit(url, out, [prefix], model_spec, images_per_job)
    total = len(images)
    check(summary["images"] == total, f"submitter listed {total} images (not notes.txt)")
    manifests = -(-total // images_per_job)
    check(summary["manifests"] == manifests, f"{manifests} manifests of <= {images_per_job} images")
    check(summary["run_uri"].startswith(out["RunRoot"]), f"run kept under RunRoot: {summary['run_uri']}")

    kids = children(url, [j["job_id"] for j in summary["jobs"]])
    check(len(kids) == manifests, f"{len(kids)} array children, one per manifest")
    for kid in kids:
        done = run_child(kid)
        if done.returncode != 0:
            raise Failed(f"worker for {kid.job_id} exited {done.returncode}:\n{done.stderr[-3000:]}")
    check(True, f"every child exited 0 ({len(kids)} worker runs)")

    items = vectors(c, out["TableName"])
    good = {prefix + n for n in images if n != "broken.jpg"}
    check(set(items) == good, f"table holds exactly the {len(good)} decodable images, keyed by S3 key")
    for image_id, item in items.items():
        vec = np.frombuffer(item["Vector"]["B"], dtype=item["DataType"]["S"])
        if not (int(item["Dimension"]["N"]) == 512 and vec.shape == (512,) and np.isfinite(vec).all()
                and np.abs(vec).sum() > 0):
            raise Failed(f"item {image_id}: not a finite non-zero 512-d float32 vector")
    check(True, "every item: 512-d little-endian float32, finite, non-zero (numpy np.frombuffer)")

    s3 = c["s3"]
    run_key = summary["run_uri"].split("/", 3)[3]
    reports = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=run_key + "reports/").get("Contents", [])]
    summaries = [json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read())
                 for k in reports if k.endswith(".summary.json")]
    check(len(summaries) == manifests, f"{manifests} worker summaries under reports/")
    check(sum(s["written"] for s in summaries) == len(good)
          and sum(s["failed"] for s in summaries) == 1, "summaries: every good image written, 1 failed")
    failures = [line for k in reports if k.endswith(".failures.jsonl")
                for line in s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode().splitlines() if line]
    check(len(failures) == 1 and "broken.jpg" in failures[0],
          f"the corrupt image is recorded with a reason: {failures[0][:160] if failures else None}")

    code, state = status(url, out, summary["run_id"])
    check(code == 5, f"embatch status exits 5 (children succeeded, one image failed): {json.dumps(state)[:300]}")
    code, state = status(url, out, summary["run_id"], "--allow-failed-images")
    check(code == 0, f"embatch status --allow-failed-images exits 0: {json.dumps(state)[:300]}")
