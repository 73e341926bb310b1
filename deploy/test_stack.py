"""Creates the CloudFormation stack (deploy/cloudformation/embatch.yaml) in the emulator and
checks what the emulator really created. Run through deploy/test-stack.

moto skips resource types it does not implement and ignores properties it does not model,
while the stack still reports CREATE_COMPLETE; so every resource and property we rely on is
read back through its own service API. What moto cannot show is listed in NOT_EMULATED and
printed, never silently assumed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from typing import Callable

from emulated_stack import (REGION, ROOT, STACK, CREDENTIALS, Child, Failed, check, clients, create_network,
                            create_stack, end_to_end, load_template, moto_server, run_checks,
                            test_model_spec)

# Resource types / properties moto accepts but does not apply (checked by cfn-lint and checkov
# instead, and printed by this script so nobody mistakes the emulator for proof).
NOT_EMULATED = {
    "AWS::S3::BucketPolicy": "resource skipped by moto (TLS-only policy)",
    "AWS::S3::Bucket PublicAccessBlockConfiguration/VersioningConfiguration/LifecycleConfiguration/OwnershipControls":
        "properties ignored by moto's CloudFormation",
    "AWS::DynamoDB::Table SSESpecification/PointInTimeRecoverySpecification":
        "properties ignored by moto's CloudFormation",
    "AWS::ECR::Repository ImageScanningConfiguration": "property ignored by moto's CloudFormation",
    "AWS::CloudFormation::WaitCondition": "only created when more than four ImagePrefixes are given",
}

EXPECTED_OUTPUTS = {
    "Region", "BucketName", "ImagePrefixes", "RunRoot", "TableName", "TableArn", "JobQueueArn",
    "JobDefinitionArn", "JobDefinitionName", "RepositoryUri", "ContainerImage",
    "ComputeEnvironmentArn", "LogGroupName", "JobRoleArn", "SubmitterPolicyArn", "ReaderPolicyArn",
}


def policy_document(doc) -> dict:
    """A policy document as IAM returns it: JSON (AWS, URL-decoded by boto3) or, from a moto
    stack, the Python repr of the template's dict."""
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(doc)
    except json.JSONDecodeError:
        return ast.literal_eval(doc)


def check_template_statically() -> None:
    """What moto ignores, asserted on the template itself (cfn-lint/checkov check it too)."""
    res = load_template()["Resources"]
    bucket = res["ImageBucket"]["Properties"]
    check(all(bucket["PublicAccessBlockConfiguration"].values())
          and len(bucket["PublicAccessBlockConfiguration"]) == 4, "template: bucket blocks public access")
    check(bucket["VersioningConfiguration"]["Status"] == "Enabled", "template: bucket versioned")
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    check("expire-run-files" in rules and "ExpirationInDays" in rules["expire-run-files"],
          "template: lifecycle rule expires run files (manifests, reports)")
    stmt = res["ImageBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    check(stmt["Effect"] == "Deny" and stmt["Condition"] == {"Bool": {"aws:SecureTransport": "false"}},
          "template: bucket policy denies non-TLS access")
    table = res["VectorTable"]["Properties"]
    repo = res["Repository"]["Properties"]
    check(repo["ImageScanningConfiguration"]["ScanOnPush"] is True, "template: ECR scan on push")
    check(table["SSESpecification"]["SSEEnabled"] is True, "template: table encrypted")
    check(table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True,
          "template: table point-in-time recovery")
    check_shutdown_margin()


# The worker must have flushed and exited 143 this long before the ECS agent's SIGKILL.
SHUTDOWN_MARGIN_S = 10


def check_shutdown_margin() -> None:
    """Both launch templates drain Spot instances and give stopped containers a stop timeout
    the worker's default shutdown grace fits into with a margin."""
    import re
    texts = {p: (ROOT / p).read_text() for p in
             ["deploy/cloudformation/embatch.yaml", "deploy/terraform/modules/embatch/main.tf"]}
    timeouts = set()
    for path, text in texts.items():
        check("ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in text, f"{path}: Spot instance draining on")
        found = re.findall(r"ECS_CONTAINER_STOP_TIMEOUT=(\d+)s", text)
        check(len(found) == 1, f"{path}: one ECS_CONTAINER_STOP_TIMEOUT")
        timeouts.add(int(found[0]))
    check(len(timeouts) == 1, f"the same stop timeout in both variants: {timeouts}")
    worker = ROOT / "target" / "release" / "embatch-worker"
    if not worker.is_file():
        print("  --  target/release/embatch-worker not built: shutdown grace not compared")
        return
    help_text = subprocess.run([str(worker), "--help"], capture_output=True, text=True).stdout
    grace = int(re.search(r"--shutdown-timeout-secs.*?\[default: (\d+)\]", help_text, re.S).group(1))
    stop = timeouts.pop()
    check(grace + SHUTDOWN_MARGIN_S <= stop,
          f"the worker's shutdown grace ({grace} s) ends {stop - grace} s before the stop timeout ({stop} s)")


def check_resources(c: dict, out: dict, prefixes: list[str], subnet: str, sg: str) -> None:
    missing = EXPECTED_OUTPUTS - out.keys()
    check(not missing, f"every output present (missing: {sorted(missing)})")

    # Which template resources does the stack really hold?
    template_types = {}
    for logical, res in load_template()["Resources"].items():
        if "Condition" not in res:
            template_types[logical] = res["Type"]
    created = {r["LogicalResourceId"]: r["ResourceType"] for r in
               c["cloudformation"].list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
    skipped = {k: v for k, v in template_types.items() if k not in created}
    check(set(skipped.values()) <= {"AWS::S3::BucketPolicy"},
          f"moto created every resource except the known gap(s): skipped = {skipped}")

    bucket = out["BucketName"]
    s3 = c["s3"]
    s3.head_bucket(Bucket=bucket)
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    check(enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms",
          f"bucket {bucket} encrypted with aws:kms")
    check(out["RunRoot"] == f"s3://{bucket}/embatch-runs/", f"RunRoot = {out['RunRoot']}")

    table = c["dynamodb"].describe_table(TableName=out["TableName"])["Table"]
    check(table["KeySchema"] == [{"AttributeName": "ImageId", "KeyType": "HASH"}],
          f"table {out['TableName']} keyed by ImageId (HASH)")
    check(table["AttributeDefinitions"] == [{"AttributeName": "ImageId", "AttributeType": "S"}],
          "ImageId is a string")
    check(table.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST",
          "table billing is on-demand")
    repo = c["ecr"].describe_repositories(repositoryNames=[out["RepositoryUri"].split("/", 1)[1]])
    repo = repo["repositories"][0]
    check(repo["imageTagMutability"] == "IMMUTABLE", "ECR tags immutable")
    check(out["ContainerImage"] == out["RepositoryUri"] + ":0.1.0", "job image = repository:ImageTag")

    groups = c["logs"].describe_log_groups(logGroupNamePrefix=out["LogGroupName"])["logGroups"]
    check(len(groups) == 1 and groups[0].get("retentionInDays") == 30,
          f"log group {out['LogGroupName']} with 30-day retention")

    batch = c["batch"]
    ce = batch.describe_compute_environments(computeEnvironments=[out["ComputeEnvironmentArn"]])
    ce = ce["computeEnvironments"][0]
    cr = ce["computeResources"]
    check(ce["type"] == "MANAGED" and cr["type"] == "SPOT", "managed SPOT compute environment")
    check(cr["maxvCpus"] == 256 and cr["minvCpus"] == 0, "vCPUs 0..256")
    check(cr["instanceTypes"] == ["c7i", "c6i", "c6a", "c5"], "instance families from parameter")
    check(cr["subnets"] == [subnet] and cr["securityGroupIds"] == [sg],
          "in the user's subnet and security group")
    queue = batch.describe_job_queues(jobQueues=[out["JobQueueArn"]])["jobQueues"][0]
    check(queue["state"] == "ENABLED" and queue["computeEnvironmentOrder"][0]["computeEnvironment"]
          == out["ComputeEnvironmentArn"], "job queue enabled on the compute environment")

    jd = batch.describe_job_definitions(jobDefinitionName=out["JobDefinitionName"],
                                        status="ACTIVE")["jobDefinitions"]
    check(len(jd) == 1 and jd[0]["jobDefinitionArn"] == out["JobDefinitionArn"],
          "one active job definition, the output's")
    jd = jd[0]
    cp = jd["containerProperties"]
    check(cp["image"] == out["ContainerImage"], "job definition runs ContainerImage")
    check(cp["jobRoleArn"] == out["JobRoleArn"], "job definition uses the job role")
    req = {r["type"]: str(r["value"]) for r in cp["resourceRequirements"]}
    check(req == {"VCPU": "4", "MEMORY": "6144"}, f"vCPU/memory from parameters: {req}")
    env = {e["name"]: e["value"] for e in cp["environment"]}
    check(env.get("EMBATCH_TABLE") == out["TableName"] and env.get("AWS_REGION") == REGION,
          "job environment names the table and region")
    check(env.get("EMBATCH_JOB_VCPUS") == "4" and env.get("EMBATCH_JOB_MEMORY_MIB") == "6144"
          and env.get("EMBATCH_JOB_ROLE_ARN") == out["JobRoleArn"],
          "job environment tells the worker its vCPUs, memory and role")
    rs = jd["retryStrategy"]
    check(rs["attempts"] == 3, "3 attempts")
    rules = [(r.get("onStatusReason"), r.get("onExitCode"), r.get("onReason"), r["action"].upper())
             for r in rs["evaluateOnExit"]]
    check(rules == [("Host EC2*", None, None, "RETRY"), (None, "75", None, "RETRY"),
                    (None, "143", None, "RETRY"), (None, "*", None, "EXIT"),
                    (None, None, "*", "EXIT")],
          "retry on host failure / spot reclaim, 75, 143; exit otherwise (incl. 2)")

    # IAM: the job role's statements, resource by resource.
    iam = c["iam"]
    role = out["JobRoleArn"].rsplit("/", 1)[1]
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    doc = iam.get_role_policy(RoleName=role, PolicyName=names[0])["PolicyDocument"]
    doc = policy_document(doc)
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    arn = f"arn:aws:s3:::{bucket}"

    def as_list(v) -> list:
        # moto keeps AWS::NoValue as null inside lists, where CloudFormation drops the item.
        return [x for x in v if x is not None] if isinstance(v, list) else [v]

    check(as_list(by_sid["ReadImages"]["Resource"]) == [f"{arn}/{p}*" for p in prefixes],
          f"worker reads only the image prefixes {prefixes}: {by_sid['ReadImages']['Resource']}")
    check(as_list(by_sid["ReadManifests"]["Resource"]) == [f"{arn}/embatch-runs/*/manifests/*"],
          "worker reads only manifests")
    check(as_list(by_sid["WriteReports"]["Resource"]) == [f"{arn}/embatch-runs/*/reports/*"]
          and as_list(by_sid["WriteReports"]["Action"]) == ["s3:PutObject"],
          "worker writes only reports")
    check(as_list(by_sid["WriteVectors"]["Resource"]) == [out["TableArn"]], "worker writes only the table")
    actions = sorted(a for s in doc["Statement"] for a in as_list(s["Action"]))
    check(not any("*" in a for a in actions), f"no wildcard actions in the job role: {actions}")

    sub = iam.get_policy(PolicyArn=out["SubmitterPolicyArn"])["Policy"]
    sub = iam.get_policy_version(PolicyArn=out["SubmitterPolicyArn"],
                                 VersionId=sub["DefaultVersionId"])["PolicyVersion"]["Document"]
    sub = policy_document(sub)
    sub = {s["Sid"]: s for s in sub["Statement"]}
    check(as_list(sub["ListImagesAndRuns"]["Condition"]["StringLike"]["s3:prefix"])
          == [f"{p}*" for p in prefixes] + ["embatch-runs/*"],
          "submitter lists only the image prefixes and the run root")
    check(out["JobQueueArn"] in as_list(sub["SubmitToThisQueue"]["Resource"]),
          "submitter submits only to this queue")

    for what, note in NOT_EMULATED.items():
        print(f"  --  not emulated: {what}: {note}")


def host_worker(url: str) -> "Callable[[Child], subprocess.CompletedProcess]":
    """Runs target/release/embatch-worker for a child, with only the environment Batch gives it
    (plus the emulator's endpoint and test credentials)."""
    worker = ROOT / "target" / "release" / "embatch-worker"

    def run(child: Child) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ["PATH"], **CREDENTIALS, "AWS_ENDPOINT_URL": url, **child.env}
        return subprocess.run([str(worker)], env=env, capture_output=True, text=True, timeout=600)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-e2e", action="store_true",
                    help="only create and check the stack (no submitter/worker run)")
    args = ap.parse_args()
    prefixes = ["images/", "more/images/"]
    if not args.no_e2e:
        for binary in ("embatch", "embatch-worker", "batch-children"):
            if not (ROOT / "target" / "release" / binary).is_file():
                raise Failed(f"target/release/{binary} is missing: "
                             "cargo build --release --workspace --bins")
        spec = test_model_spec()
    with moto_server() as url:
        c = clients(url)
        print(f"moto on {url}")
        subnet, sg, service_role = create_network(c)
        out = create_stack(c, subnet, sg, service_role, ",".join(prefixes))
        check_resources(c, out, prefixes, subnet, sg)
        check_template_statically()
        if not args.no_e2e:
            print("end to end against the stack's outputs (submitter + worker binaries):")
            end_to_end(c, url, out, host_worker(url), model_spec=str(spec))


if __name__ == "__main__":
    run_checks(main, "deploy/test-stack")
