# A root module deploying embatch into existing subnets and a security group.
#   terraform init && terraform apply -var 'subnet_ids=["subnet-..."]' -var 'security_group_ids=["sg-..."]'

# The AWS provider's source and version constraint come from the module (its versions.tf).
terraform {
  required_version = ">= 1.5"
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "subnet_ids" {
  type = list(string)
}

variable "security_group_ids" {
  type = list(string)
}

provider "aws" {
  region = var.region
}

module "embatch" {
  source             = "../../modules/embatch"
  subnet_ids         = var.subnet_ids
  security_group_ids = var.security_group_ids
  image_prefixes     = ["images/"]
  compute_type       = "SPOT"
}

output "embatch" {
  description = "Everything the submitter needs."
  value       = module.embatch
}
