output "region" {
  description = "Region of the deployment (AWS_REGION for the submitter)."
  value       = local.region
}

output "bucket_name" {
  description = "The image bucket; upload images below one of image_prefixes."
  value       = aws_s3_bucket.images.id
}

output "image_prefixes" {
  description = "Prefixes the worker may read (comma-separated)."
  value       = join(",", var.image_prefixes)
}

output "export_root" {
  description = "Where readers may write Parquet exports (embatch-vectors export --format parquet --out)."
  value       = "s3://${aws_s3_bucket.images.id}/${var.export_prefix}"
}

output "vector_bucket_name" {
  description = "The S3 Vectors bucket readers may load (embatch-vectors index --vector-bucket), or empty."
  value       = var.vector_bucket_name
}

output "vector_index_policy_arn" {
  description = "Attach beside reader_policy_arn to whoever loads the vector index (null without vector_bucket_name)."
  value       = one(aws_iam_policy.vector_index[*].arn)
}

output "run_root" {
  description = "Run root for manifests, reports and run.json (the submitter's run root)."
  value       = "s3://${aws_s3_bucket.images.id}/${var.run_prefix}"
}

output "table_name" {
  description = "The vector table."
  value       = aws_dynamodb_table.vectors.name
}

output "table_arn" {
  value = aws_dynamodb_table.vectors.arn
}

output "job_queue_arn" {
  description = "The job queue."
  value       = aws_batch_job_queue.this.arn
}

output "job_definition_arn" {
  description = "The job definition (the name alone means its latest revision)."
  value       = aws_batch_job_definition.worker.arn
}

output "job_definition_name" {
  value = aws_batch_job_definition.worker.name
}

output "repository_uri" {
  description = "Push the worker image here, tagged with image_tag."
  value       = aws_ecr_repository.worker.repository_url
}

output "container_image" {
  description = "The image the job definition runs."
  value       = local.container_image
}

output "compute_environment_arn" {
  value = aws_batch_compute_environment.this.arn
}

output "log_group_name" {
  description = "Worker logs (one stream per attempt)."
  value       = aws_cloudwatch_log_group.worker.name
}

output "job_role_arn" {
  value = aws_iam_role.job.arn
}

output "submitter_policy_arn" {
  description = "Managed policy for the people or CI that submit runs."
  value       = aws_iam_policy.submitter.arn
}

output "reader_policy_arn" {
  description = "Managed policy for consumers of the vectors."
  value       = aws_iam_policy.reader.arn
}

output "inventory_policy_arn" {
  description = "Managed policy for submitters that read S3 Inventory reports (beside submitter_policy_arn); null without inventory_location."
  value       = one(aws_iam_policy.inventory[*].arn)
}
