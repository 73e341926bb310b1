"""Deploys embatch into a running emulator and prints, as JSON, what the enforced-IAM tests need:
the deployment's outputs and the IAM policies of its three principals, as deployed.

    deployed_policies.py cloudformation --endpoint http://127.0.0.1:PORT
    deployed_policies.py terraform --endpoint http://127.0.0.1:PORT

- cloudformation: the stack of deploy/cloudformation/embatch.yaml, created as deploy/test-stack
  creates it (emulated_stack.create_network + create_stack, default parameters but the network
  VectorBucketName and InventoryLocation),
  and its policies read back through the IAM API.
- terraform: deploy/terraform/modules/embatch applied against the emulator (provider endpoints
  overridden, offline provider mirror), and its policies from `terraform show -json`.

Output: {"outputs": {...}, "principals": {"submitter": [...], "worker": [...], "reader": [...]},
"bucket_policy": {...} | null}; each principal's list holds {"name", "document"} policies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from emulated_stack import ROOT, clients, create_network, create_stack
from test_stack import policy_document

PREFIXES = ["images/", "more/images/"]
# The S3 Vectors bucket the reader is granted (the flows create it: neither the emulator's
# CloudFormation nor the Terraform provider can).
VECTOR_BUCKET = "embatch-test-vector-index"
# Where the submitter may read S3 Inventory reports (the flows create the bucket and a report).
INVENTORY_LOCATION = "embatch-test-inventory/reports/"
TF_PLUGIN_DIR = os.environ.get("TF_PLUGIN_DIR", "/opt/tf-plugins")


def drop_nulls(value):
    """moto keeps AWS::NoValue as null inside lists, where CloudFormation drops the item."""
    if isinstance(value, list):
        return [drop_nulls(v) for v in value if v is not None]
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def managed(iam, arn: str) -> dict:
    policy = iam.get_policy(PolicyArn=arn)["Policy"]
    version = iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])
    return {"name": policy["PolicyName"], "document": drop_nulls(policy_document(version["PolicyVersion"]["Document"]))}


def role_policies(iam, role_arn: str) -> list[dict]:
    """The role's inline and attached policies, as IAM holds them."""
    role = role_arn.rsplit("/", 1)[1]
    out = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        out.append({"name": name, "document": drop_nulls(policy_document(doc))})
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        out.append(managed(iam, attached["PolicyArn"]))
    return out


def bucket_policy(s3, bucket: str):
    try:
        return json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except s3.exceptions.ClientError:
        return None


def cloudformation(url: str) -> dict:
    c = clients(url)
    subnet, sg, role = create_network(c)
    # create_stack prints its checks; keep stdout for the JSON.
    sys.stdout, real = sys.stderr, sys.stdout
    try:
        out = create_stack(c, subnet, sg, role, ",".join(PREFIXES), {"VectorBucketName": VECTOR_BUCKET, "InventoryLocation": INVENTORY_LOCATION})
    finally:
        sys.stdout = real
    iam = c["iam"]
    return {
        "outputs": {
            "bucket": out["BucketName"],
            "image_prefixes": out["ImagePrefixes"].split(","),
            "run_root": out["RunRoot"],
            "export_root": out["ExportRoot"],
            "vector_bucket": out["VectorBucketName"],
            "inventory_root": f"s3://{INVENTORY_LOCATION}",
            "table": out["TableName"],
            "job_queue": out["JobQueueArn"],
            "job_definition": out["JobDefinitionName"],
            "job_definition_arn": out["JobDefinitionArn"],
            "job_role_arn": out["JobRoleArn"],
        },
        "principals": {
            "submitter": [managed(iam, out["SubmitterPolicyArn"]), managed(iam, out["InventoryPolicyArn"])],
            "worker": role_policies(iam, out["JobRoleArn"]),
            "reader": [managed(iam, out["ReaderPolicyArn"]), managed(iam, out["VectorIndexPolicyArn"])],
        },
        "bucket_policy": bucket_policy(c["s3"], out["BucketName"]),
    }


ROOT_MODULE = """
terraform {{
  required_providers {{
    aws = {{ source = "hashicorp/aws" }}
  }}
}}
provider "aws" {{
  region                      = "us-east-1"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true
  endpoints {{
    s3             = "{url}"
    dynamodb       = "{url}"
    batch          = "{url}"
    iam            = "{url}"
    ec2            = "{url}"
    ecr            = "{url}"
    cloudwatchlogs = "{url}"
    sts            = "{url}"
  }}
}}
resource "aws_vpc" "v" {{ cidr_block = "10.0.0.0/16" }}
resource "aws_subnet" "s" {{
  vpc_id     = aws_vpc.v.id
  cidr_block = "10.0.1.0/24"
}}
resource "aws_security_group" "g" {{
  vpc_id = aws_vpc.v.id
  name   = "embatch-batch"
}}
# moto crashes on a compute environment without a service role.
resource "aws_iam_role" "service" {{
  name               = "embatch-test-batch-service"
  assume_role_policy = jsonencode({{ Version = "2012-10-17", Statement = [{{ Effect = "Allow", Principal = {{ Service = "batch.amazonaws.com" }}, Action = "sts:AssumeRole" }}] }})
}}
module "embatch" {{
  source                 = "{module}"
  subnet_ids             = [aws_subnet.s.id]
  security_group_ids     = [aws_security_group.g.id]
  batch_service_role_arn = aws_iam_role.service.arn
  image_prefixes         = {prefixes}
  vector_bucket_name     = "{vector_bucket}"
  inventory_location     = "{inventory}"
}}
output "embatch" {{ value = module.embatch }}
"""

# What the flows need; the bucket's lifecycle rules (a minute of polling against the emulator)
# and the instance role's AWS-managed policy (absent from the emulator) are not among them.
TF_TARGETS = ["aws_iam_policy.submitter", "aws_iam_policy.inventory", "aws_iam_policy.reader",
              "aws_iam_policy.vector_index", "aws_iam_role_policy.job",
              "aws_batch_job_definition.worker", "aws_s3_bucket_policy.images"]


def terraform(url: str) -> dict:
    module = ROOT / "deploy" / "terraform" / "modules" / "embatch"
    (ROOT / "target").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "target", prefix="iam-terraform-") as work:
        Path(work, "main.tf").write_text(ROOT_MODULE.format(url=url, module=module, prefixes=json.dumps(PREFIXES),
                                                              vector_bucket=VECTOR_BUCKET,
                                                              inventory=INVENTORY_LOCATION))
        env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": os.devnull}

        def tf(*args: str) -> str:
            done = subprocess.run(["terraform", f"-chdir={work}", *args], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"terraform {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            return done.stdout

        tf("init", "-backend=false", "-input=false", f"-plugin-dir={TF_PLUGIN_DIR}")
        tf("apply", "-auto-approve", "-input=false", "-no-color", *[f"-target=module.embatch.{t}" for t in TF_TARGETS])
        state = json.loads(tf("show", "-json"))
    resources = {}

    def walk(mod):
        for r in mod.get("resources", []):
            resources[r["address"]] = r["values"]
        for child in mod.get("child_modules", []):
            walk(child)

    walk(state["values"]["root_module"])

    def value(resource: str, attribute: str) -> str:
        return resources[f"module.embatch.{resource}"][attribute]

    def policy(address: str, name: str) -> dict:
        return {"name": name, "document": json.loads(resources[address]["policy"])}

    # A targeted apply writes no outputs: the same values, read from the resources.
    bucket = value("aws_s3_bucket.images", "bucket")
    # moto applies a bucket policy itself, and this one denies every request without TLS: all
    # of the emulator's (plain HTTP on 127.0.0.1). The enforcing proxy applies it instead, to
    # requests it knows arrive over TLS on AWS.
    clients(url)["s3"].delete_bucket_policy(Bucket=bucket)
    return {
        "outputs": {
            "bucket": bucket,
            "image_prefixes": PREFIXES,
            "run_root": f"s3://{bucket}/embatch-runs/",
            "export_root": f"s3://{bucket}/embatch-exports/",
            "vector_bucket": VECTOR_BUCKET,
            "inventory_root": f"s3://{INVENTORY_LOCATION}",
            "table": value("aws_dynamodb_table.vectors", "name"),
            "job_queue": value("aws_batch_job_queue.this", "arn"),
            "job_definition": value("aws_batch_job_definition.worker", "name"),
            "job_definition_arn": value("aws_batch_job_definition.worker", "arn"),
            "job_role_arn": value("aws_iam_role.job", "arn"),
        },
        "principals": {
            "submitter": [policy("module.embatch.aws_iam_policy.submitter", "submitter"),
                          policy("module.embatch.aws_iam_policy.inventory[0]", "inventory")],
            "worker": [policy("module.embatch.aws_iam_role_policy.job", "embatch-worker")],
            "reader": [policy("module.embatch.aws_iam_policy.reader", "reader"),
                       policy("module.embatch.aws_iam_policy.vector_index[0]", "vector-index")],
        },
        "bucket_policy": json.loads(resources["module.embatch.aws_s3_bucket_policy.images"]["policy"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", choices=["cloudformation", "terraform"])
    ap.add_argument("--endpoint", required=True, help="the emulator, http://127.0.0.1:PORT")
    args = ap.parse_args()
    deployed = cloudformation(args.endpoint) if args.variant == "cloudformation" else terraform(args.endpoint)
    print(json.dumps(deployed, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
