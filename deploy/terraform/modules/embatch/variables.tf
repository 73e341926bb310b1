variable "name_prefix" {
  description = "Prefix of every named resource (lowercase; the bucket is <prefix>-<account>-<region>)."
  type        = string
  default     = "embatch"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,24}$", var.name_prefix))
    error_message = "name_prefix must match ^[a-z][a-z0-9-]{1,24}$."
  }
}

variable "image_prefixes" {
  description = "Key prefixes in the image bucket that hold images. The worker may read only these; the submitter may list only these."
  type        = list(string)
  default     = ["images/"]
  validation {
    condition     = length(var.image_prefixes) > 0 && alltrue([for p in var.image_prefixes : p != ""])
    error_message = "image_prefixes needs at least one prefix and no empty prefix (that would grant the whole bucket)."
  }
}

variable "run_prefix" {
  description = "Run root inside the bucket (ends with \"/\"); manifests, reports and run.json live below it."
  type        = string
  default     = "embatch-runs/"
  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/$", var.run_prefix))
    error_message = "run_prefix must be a key prefix ending with \"/\"."
  }
}

variable "export_prefix" {
  description = "Where readers may write Parquet exports of the vectors in the bucket (ends with \"/\"; embatch-vectors export --format parquet --out s3://<bucket>/<export_prefix>...)."
  type        = string
  default     = "embatch-exports/"
  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/$", var.export_prefix))
    error_message = "export_prefix must be a key prefix ending with \"/\"."
  }
}

variable "inventory_location" {
  description = "Where the S3 Inventory reports of the image bucket are delivered, as bucket/prefix/ (embatch submit --inventory s3://<bucket>/<prefix>.../manifest.json). Empty, the default, creates no inventory policy."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([A-Za-z0-9!_.*'()-]+/)*$", var.inventory_location))
    error_message = "inventory_location must be empty or bucket/prefix/ (ending with a slash)."
  }
}

variable "vector_bucket_name" {
  description = "An Amazon S3 Vectors bucket whose indexes readers may load (embatch-vectors index --vector-bucket; --create makes the index). Empty, the default, grants no S3 Vectors access. The AWS provider (5.100) has no S3 Vectors resources: create the bucket with `aws s3vectors create-vector-bucket`."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^$|^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", var.vector_bucket_name))
    error_message = "vector_bucket_name must be empty or an S3 Vectors bucket name."
  }
}

variable "run_files_retention_days" {
  description = "Days after which manifests, reports and run.json under run_prefix expire."
  type        = number
  default     = 30
}

variable "subnet_ids" {
  description = "Subnets of the Batch instances (private subnets with a NAT or VPC endpoints for S3, DynamoDB, ECR, CloudWatch Logs)."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the Batch instances (egress to HTTPS only; no ingress is needed)."
  type        = list(string)
}

variable "compute_type" {
  description = "SPOT (cheaper; reclaimed instances are retried by the job definition) or EC2 (on-demand)."
  type        = string
  default     = "SPOT"
  validation {
    condition     = contains(["SPOT", "EC2"], var.compute_type)
    error_message = "compute_type must be SPOT or EC2."
  }
}

variable "instance_types" {
  description = "Instance families or types Batch may launch."
  type        = list(string)
  default     = ["c7i", "c6i", "c6a", "c5"]
}

variable "max_vcpus" {
  description = "Upper bound of the compute environment (caps cost and the DynamoDB write rate)."
  type        = number
  default     = 256
}

variable "batch_service_role_arn" {
  description = "Optional service role of the compute environment; null uses the Batch service-linked role."
  type        = string
  default     = null
}

variable "image_tag" {
  description = "Tag of the worker image in this module's ECR repository (tags are immutable; push a new tag to upgrade)."
  type        = string
  default     = "0.1.0"
}

variable "container_image" {
  description = "Optional full image URI; overrides <this module's repository>:<image_tag>."
  type        = string
  default     = null
}

variable "job_vcpus" {
  description = "vCPUs per array child (the worker uses all of them)."
  type        = number
  default     = 4
}

variable "job_memory_mib" {
  description = "Memory per array child in MiB."
  type        = number
  default     = 6144
}

variable "job_timeout_seconds" {
  description = "Attempt timeout of one array child."
  type        = number
  default     = 3600
  validation {
    condition     = var.job_timeout_seconds >= 60
    error_message = "job_timeout_seconds must be at least 60."
  }
}

variable "retry_attempts" {
  description = "Attempts per array child (retried only on spot reclaims, host failures, exit 75 and 143)."
  type        = number
  default     = 3
  validation {
    condition     = var.retry_attempts >= 1 && var.retry_attempts <= 10
    error_message = "retry_attempts must be 1..10."
  }
}

variable "log_retention_days" {
  description = "Retention of the worker logs."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = { Application = "embatch" }
}
