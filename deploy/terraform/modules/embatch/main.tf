# embatch: the same resources, inputs and outputs as deploy/cloudformation/embatch.yaml.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition

  bucket_name         = "${var.name_prefix}-${local.account_id}-${local.region}"
  table_name          = "${var.name_prefix}-vectors"
  job_definition_name = "${var.name_prefix}-worker"
  container_image     = coalesce(var.container_image, "${aws_ecr_repository.worker.repository_url}:${var.image_tag}")
}

# ---------------------------------------------------------------- data

resource "aws_s3_bucket" "images" {
  # checkov:skip=CKV_AWS_18:Server access logging needs a second bucket the user owns; enable it (or CloudTrail data events) per account policy.
  # checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice, not needed by the pipeline.
  # checkov:skip=CKV2_AWS_62:Event notifications are not used by the pipeline (the submitter lists prefixes).
  bucket = local.bucket_name
  tags   = var.tags

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_public_access_block" "images" {
  bucket                  = aws_s3_bucket.images.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "images" {
  bucket = aws_s3_bucket.images.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "images" {
  # checkov:skip=CKV2_AWS_67:Encrypted with the AWS managed S3 KMS key; a customer managed key is optional (see README).
  bucket = aws_s3_bucket.images.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "images" {
  bucket = aws_s3_bucket.images.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "images" {
  bucket = aws_s3_bucket.images.id

  rule {
    id     = "expire-run-files"
    status = "Enabled"
    filter {
      prefix = var.run_prefix
    }
    expiration {
      days = var.run_files_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "tidy-bucket"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }

  depends_on = [aws_s3_bucket_versioning.images]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.images.arn, "${aws_s3_bucket.images.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "images" {
  bucket     = aws_s3_bucket.images.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.images]
}

resource "aws_dynamodb_table" "vectors" {
  # checkov:skip=CKV_AWS_119:Encrypted with the AWS managed KMS key; a customer managed key adds a key policy every reader must be granted.
  name         = local.table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "ImageId"

  attribute {
    name = "ImageId"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = var.tags

  lifecycle {
    prevent_destroy = true
  }
}

# ---------------------------------------------------------------- image

resource "aws_ecr_repository" "worker" {
  # checkov:skip=CKV_AWS_136:Images hold no secrets (no credentials, public model weights); AES-256 at rest is enough.
  name                 = "${var.name_prefix}-worker"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256"
  }

  tags = var.tags
}

resource "aws_ecr_lifecycle_policy" "worker" {
  repository = aws_ecr_repository.worker.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the 10 newest images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 10 }
      action       = { type = "expire" }
    }]
  })
}

# ---------------------------------------------------------------- logs

resource "aws_cloudwatch_log_group" "worker" {
  # checkov:skip=CKV_AWS_158:Worker logs hold S3 keys and counts, no secrets; CloudWatch Logs encrypts them at rest by default.
  # checkov:skip=CKV_AWS_338:Retention is a parameter (default 30 days); a year of debug logs is not needed.
  name              = "/aws/batch/${var.name_prefix}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

# ---------------------------------------------------------------- compute

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name_prefix        = "${var.name_prefix}-instance-"
  description        = "ECS container instances of the embatch compute environment (agent, image pull, log delivery)."
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "instance" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "instance" {
  name_prefix = "${var.name_prefix}-instance-"
  role        = aws_iam_role.instance.name
  tags        = var.tags
}

resource "aws_launch_template" "instance" {
  name_prefix = "${var.name_prefix}-"
  # IMDSv2 only, hop limit 1: a container on a bridge network cannot reach the instance
  # metadata service. AWS Batch runs EC2 jobs in host network mode, where the hop limit does
  # not stop a container, so the user data also blocks the metadata address for the worker's
  # uid (10001) with an iptables owner match; the ECS agent (root) keeps it. The worker gets
  # credentials from its job role only (the ECS credential endpoint).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  # MIME multi-part, as AWS Batch requires (it merges its own part in). Keep the iptables line
  # identical to the CloudFormation template's: a test applies it in a network namespace.
  # ECS agent: Spot interruption notices drain the instance (SIGTERM to the workers), and a
  # stopped container gets 60 s before SIGKILL; the worker flushes within 45 s.
  user_data = base64encode(<<-EOT
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary="==EMBATCH=="

    --==EMBATCH==
    Content-Type: text/x-shellscript; charset="us-ascii"

    #!/bin/bash
    set -euo pipefail
    iptables --insert OUTPUT --proto tcp --destination 169.254.169.254 --match owner --uid-owner 10001 --jump REJECT
    cat >> /etc/ecs/ecs.config <<'ECS'
    ECS_ENABLE_SPOT_INSTANCE_DRAINING=true
    ECS_CONTAINER_STOP_TIMEOUT=60s
    ECS

    --==EMBATCH==--
  EOT
  )
  tags = var.tags
}

resource "aws_batch_compute_environment" "this" {
  compute_environment_name_prefix = "${var.name_prefix}-"
  type                            = "MANAGED"
  state                           = "ENABLED"
  service_role                    = var.batch_service_role_arn

  compute_resources {
    type                = var.compute_type
    allocation_strategy = var.compute_type == "SPOT" ? "SPOT_PRICE_CAPACITY_OPTIMIZED" : "BEST_FIT_PROGRESSIVE"
    min_vcpus           = 0
    max_vcpus           = var.max_vcpus
    instance_type       = var.instance_types
    subnets             = var.subnet_ids
    security_group_ids  = var.security_group_ids
    instance_role       = aws_iam_instance_profile.instance.arn

    ec2_configuration {
      image_type = "ECS_AL2023"
    }

    launch_template {
      launch_template_id = aws_launch_template.instance.id
      version            = aws_launch_template.instance.latest_version
    }

    tags = var.tags
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_batch_job_queue" "this" {
  name     = "${var.name_prefix}-queue"
  state    = "ENABLED"
  priority = 1

  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.this.arn
  }

  tags = var.tags
}

# ---------------------------------------------------------------- worker job

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "ReadImages"
    actions   = ["s3:GetObject"]
    resources = [for p in var.image_prefixes : "${aws_s3_bucket.images.arn}/${p}*"]
  }
  statement {
    # Without s3:ListBucket, S3 answers 403 (not 404) for a key that does not exist: an image
    # deleted after listing would be recorded access_denied. Listing is limited to the image
    # prefixes, like reading.
    sid       = "TellMissingFromDenied"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.images.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [for p in var.image_prefixes : "${p}*"]
    }
  }
  statement {
    sid       = "ReadManifests"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.images.arn}/${var.run_prefix}*/manifests/*"]
  }
  statement {
    sid       = "WriteReports"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.images.arn}/${var.run_prefix}*/reports/*"]
  }
  statement {
    sid = "WriteVectors"
    # BatchGetItem: which images are already stored (resume).
    actions = [
      "dynamodb:BatchWriteItem",
      "dynamodb:BatchGetItem",
    ]
    resources = [aws_dynamodb_table.vectors.arn]
  }
}

resource "aws_iam_role" "job" {
  name_prefix        = "${var.name_prefix}-job-"
  description        = "The embatch worker (one array child): reads its manifest and images, writes vectors and reports."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "job" {
  name   = "embatch-worker"
  role   = aws_iam_role.job.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_batch_job_definition" "worker" {
  name                  = local.job_definition_name
  type                  = "container"
  platform_capabilities = ["EC2"]
  propagate_tags        = true

  container_properties = jsonencode({
    image      = local.container_image
    jobRoleArn = aws_iam_role.job.arn
    resourceRequirements = [
      { type = "VCPU", value = tostring(var.job_vcpus) },
      { type = "MEMORY", value = tostring(var.job_memory_mib) },
    ]
    environment = [
      # Instances allow no IMDS access from containers, so the SDK cannot discover the region.
      { name = "AWS_REGION", value = local.region },
      { name = "EMBATCH_TABLE", value = aws_dynamodb_table.vectors.name },
      # Named by the worker when access is denied.
      { name = "EMBATCH_JOB_ROLE_ARN", value = aws_iam_role.job.arn },
      # The job's share of a shared instance: the worker sizes its threads and its decode
      # memory from these, not from the instance (Batch EC2 vCPUs are CPU shares).
      { name = "EMBATCH_JOB_VCPUS", value = tostring(var.job_vcpus) },
      { name = "EMBATCH_JOB_MEMORY_MIB", value = tostring(var.job_memory_mib) },
    ]
    readonlyRootFilesystem = true
    privileged             = false
    linuxParameters = {
      initProcessEnabled = true
      tmpfs              = [{ containerPath = "/tmp", size = 256 }]
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.worker.name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "embatch"
      }
    }
  })

  # Exit codes (embatch_formats::run::exit): 75 = transient infrastructure failure, 143 =
  # SIGTERM after flushing; 2 (bad configuration, access denied) and anything else is
  # permanent and must not be retried. The rules are embatch_formats::run::retry_strategy's,
  # checked by tests/tests/e2e/retry_strategy.rs.
  retry_strategy {
    attempts = var.retry_attempts
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "retry"
    }
    evaluate_on_exit {
      on_exit_code = "75"
      action       = "retry"
    }
    evaluate_on_exit {
      on_exit_code = "143"
      action       = "retry"
    }
    evaluate_on_exit {
      on_exit_code = "*"
      action       = "exit"
    }
    # No exit code (e.g. the image could not be pulled): do not retry either.
    evaluate_on_exit {
      on_reason = "*"
      action    = "exit"
    }
  }

  timeout {
    attempt_duration_seconds = var.job_timeout_seconds
  }

  tags = var.tags
}

# ---------------------------------------------------------------- people and tools

data "aws_iam_policy_document" "submitter" {
  statement {
    sid       = "ListImagesAndRuns"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.images.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      # The image prefixes, and the run root (`embatch status` lists a run's reports).
      values = concat([for p in var.image_prefixes : "${p}*"], ["${var.run_prefix}*"])
    }
  }
  statement {
    sid       = "WriteRunFiles"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.images.arn}/${var.run_prefix}*"]
  }
  statement {
    sid     = "ReadRunStatus"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.images.arn}/${var.run_prefix}*/run.json",
      "${aws_s3_bucket.images.arn}/${var.run_prefix}*/reports/*",
    ]
  }
  statement {
    sid     = "SubmitToThisQueue"
    actions = ["batch:SubmitJob"]
    resources = [
      aws_batch_job_queue.this.arn,
      "arn:${local.partition}:batch:${local.region}:${local.account_id}:job-definition/${local.job_definition_name}",
      "arn:${local.partition}:batch:${local.region}:${local.account_id}:job-definition/${local.job_definition_name}:*",
    ]
  }
  statement {
    # SubmitJob tags each job with its run id (embatch:run-id); tagging on create needs
    # batch:TagResource on the job, and only that tag key is allowed.
    sid       = "TagJobsOnSubmit"
    actions   = ["batch:TagResource"]
    resources = ["arn:${local.partition}:batch:${local.region}:${local.account_id}:job/*"]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "aws:TagKeys"
      values   = ["embatch:run-id"]
    }
  }
  statement {
    sid = "WatchJobs"
    # Read-only Batch calls (pre-flight checks and `embatch status`); they support no
    # resource-level permissions.
    actions = [
      "batch:DescribeJobQueues",
      "batch:DescribeJobDefinitions",
      "batch:DescribeJobs",
      "batch:ListJobs",
    ]
    resources = ["*"]
  }
  statement {
    sid       = "PreflightTable"
    actions   = ["dynamodb:DescribeTable"]
    resources = [aws_dynamodb_table.vectors.arn]
  }
  # One model per table: the pre-flight reads the model attributes of a sample of items. A
  # Scan of those attributes only, never the vectors.
  statement {
    sid       = "PreflightTableModel"
    actions   = ["dynamodb:Scan"]
    resources = [aws_dynamodb_table.vectors.arn]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "dynamodb:Attributes"
      values   = ["ModelSha256", "Model", "Dimension"]
    }
    condition {
      test     = "StringEquals"
      variable = "dynamodb:Select"
      values   = ["SPECIFIC_ATTRIBUTES"]
    }
  }
}

resource "aws_iam_policy" "submitter" {
  name        = "${var.name_prefix}-${local.region}-submitter"
  description = "Attach to whoever runs `embatch submit` / `embatch status` against this deployment."
  policy      = data.aws_iam_policy_document.submitter.json
  tags        = var.tags
}

data "aws_iam_policy_document" "reader" {
  statement {
    sid = "ReadVectors"
    # BatchGetItem: embatch-vectors get; Scan: embatch-vectors export; GetItem: the original
    # sample's Python reader (boto3 Table.get_item).
    actions = [
      "dynamodb:GetItem",
      "dynamodb:BatchGetItem",
      "dynamodb:Scan",
    ]
    resources = [aws_dynamodb_table.vectors.arn]
  }
  statement {
    sid = "WriteExports"
    # embatch-vectors export --format parquet --out s3://...: one PutObject per file.
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.images.arn}/${var.export_prefix}*"]
  }
}

resource "aws_iam_policy" "reader" {
  name        = "${var.name_prefix}-${local.region}-reader"
  description = "Attach to consumers of the vectors (embatch-vectors, the sample's boto3/numpy reader)."
  policy      = data.aws_iam_policy_document.reader.json
  tags        = var.tags
}

# Reading the S3 Inventory reports under var.inventory_location (embatch submit --inventory),
# beside the submitter policy: manifest.json, manifest.checksum and the data files, one
# GetObject each; no s3:ListBucket (the submitter requires manifest.checksum).
data "aws_iam_policy_document" "inventory" {
  count = var.inventory_location == "" ? 0 : 1
  statement {
    sid       = "ReadInventoryReports"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::${var.inventory_location}*"]
  }
}

resource "aws_iam_policy" "inventory" {
  count       = var.inventory_location == "" ? 0 : 1
  name        = "${var.name_prefix}-${local.region}-inventory"
  description = "Read the S3 Inventory reports under ${var.inventory_location} (embatch submit --inventory), beside the submitter policy."
  policy      = data.aws_iam_policy_document.inventory[0].json
  tags        = var.tags
}

# Loading the indexes of var.vector_bucket_name (embatch-vectors index), beside the reader
# policy: the index's dimension, which keys it holds already (and from which model and object),
# the vectors it lacks, and the index itself (--create: the provider cannot create it).
data "aws_iam_policy_document" "vector_index" {
  count = var.vector_bucket_name == "" ? 0 : 1
  statement {
    sid       = "LoadVectorIndex"
    actions   = ["s3vectors:GetIndex", "s3vectors:GetVectors", "s3vectors:PutVectors", "s3vectors:CreateIndex"]
    resources = ["arn:${local.partition}:s3vectors:${local.region}:${local.account_id}:bucket/${var.vector_bucket_name}/index/*"]
  }
}

resource "aws_iam_policy" "vector_index" {
  count       = var.vector_bucket_name == "" ? 0 : 1
  name        = "${var.name_prefix}-${local.region}-vector-index"
  description = "Load the indexes of the S3 Vectors bucket ${var.vector_bucket_name} (embatch-vectors index), beside the reader policy."
  policy      = data.aws_iam_policy_document.vector_index[0].json
  tags        = var.tags
}
