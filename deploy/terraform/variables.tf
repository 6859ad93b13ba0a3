variable "name" {
  description = "Prefix of every resource name (also the SageMaker endpoint and model package group name)."
  type        = string
  default     = "sentiloop"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name: 2-21 lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of everything."
  type        = string
  default     = "us-east-1"
}

variable "vpc_id" {
  description = "The existing VPC to deploy into."
  type        = string
}

variable "private_subnet_ids" {
  description = "Subnets of the tasks and the metadata database (at least two AZs; they need a route to the AWS APIs and ECR: a NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "private_subnet_ids: give at least two subnets in different availability zones."
  }
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer (public ones for an internet-facing ALB; at least two AZs)."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "public_subnet_ids: give at least two subnets in different availability zones."
  }
}

variable "internal_alb" {
  description = "Make the load balancer internal (reachable only from the VPC)."
  type        = bool
  default     = false
}

variable "allowed_cidrs" {
  description = "Client networks allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener. Empty: plain HTTP on port 80 only (for a first trial; gRPC through the ALB needs HTTPS)."
  type        = string
  default     = ""
}

variable "image_tag" {
  description = "Tag of the images in ECR (CI pushes the git commit SHA; tags are immutable)."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups."
  type        = number
  default     = 365
}

variable "alb_deletion_protection" {
  description = "Protect the load balancer from deletion (turn off before terraform destroy)."
  type        = bool
  default     = true
}

variable "envoy_desired_count" {
  description = "Envoy tasks behind the load balancer."
  type        = number
  default     = 2
}

variable "scaled_services" {
  description = "Services that run several tasks, scaled on their average CPU between min and max tasks (they keep no state of their own outside the metadata database). The others run one task each."
  type        = map(object({ min = number, max = number }))
  default = {
    inference = { min = 2, max = 6 }
    feedback  = { min = 2, max = 4 }
  }

  validation {
    condition     = alltrue([for name, s in var.scaled_services : contains(["inference", "feedback"], name) && s.min >= 1 && s.max >= s.min])
    error_message = "scaled_services: only inference and feedback scale out; 1 <= min <= max."
  }
}

variable "scaling_cpu_target_percent" {
  description = "Average CPU (% of the task's reservation) the scaled services' autoscaling keeps them at."
  type        = number
  default     = 60

  validation {
    condition     = var.scaling_cpu_target_percent >= 10 && var.scaling_cpu_target_percent <= 90
    error_message = "scaling_cpu_target_percent: between 10 and 90."
  }
}

variable "db_engine_version" {
  description = "PostgreSQL major version of the metadata database (RDS applies the minor versions itself)."
  type        = string
  default     = "17"

  validation {
    condition     = contains(["16", "17"], var.db_engine_version)
    error_message = "db_engine_version: 16 or 17."
  }
}

variable "db_instance_class" {
  description = "Instance class of the metadata database (db.t4g.medium: about 400 connections; every service process keeps a pool of up to 8 per store)."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_multi_az" {
  description = "A standby in a second availability zone that takes over within a minute or two (an AZ outage, patching); false halves the cost of a trial."
  type        = bool
  default     = true
}

variable "db_allocated_storage_gb" {
  description = "Initial storage of the metadata database."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling of the metadata database."
  type        = number
  default     = 100
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery) of the metadata database."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days: 1 to 35."
  }
}

variable "db_deletion_protection" {
  description = "Protect the metadata database from deletion (turn off before terraform destroy, which then leaves a final snapshot)."
  type        = bool
  default     = true
}

variable "db_iam_authentication" {
  description = "Allow IAM database authentication (for operators' short-lived tokens; the services use the password in SENTILOOP_DATABASE_URL)."
  type        = bool
  default     = true
}

variable "sagemaker_image_account_ids" {
  description = "AWS accounts whose ECR hosts the SageMaker HuggingFace/PyTorch containers (763104351884 in most regions)."
  type        = list(string)
  default     = ["763104351884"]
}

variable "sagemaker_training_image" {
  description = "HuggingFace PyTorch training container URI (SENTILOOP_SAGEMAKER_TRAINING_IMAGE), e.g. 763104351884.dkr.ecr.REGION.amazonaws.com/huggingface-pytorch-training:TAG; list them with the sagemaker SDK's image_uris.retrieve(framework=\"huggingface\", ...) or AWS's Deep Learning Containers page."
  type        = string

  validation {
    condition     = can(regex("^\\d{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?/.+:.+$", var.sagemaker_training_image))
    error_message = "sagemaker_training_image: an ECR image URI with a tag."
  }
}

variable "sagemaker_inference_image" {
  description = "HuggingFace PyTorch inference container URI (SENTILOOP_SAGEMAKER_INFERENCE_IMAGE), a CPU one for the default ml.m5.large endpoint."
  type        = string

  validation {
    condition     = can(regex("^\\d{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?/.+:.+$", var.sagemaker_inference_image))
    error_message = "sagemaker_inference_image: an ECR image URI with a tag."
  }
}

variable "sagemaker_training_instance_type" {
  description = "Instance type of the training jobs (the HuggingFace training containers need a GPU; new accounts must ask for a quota first)."
  type        = string
  default     = "ml.g5.xlarge"
}

variable "sagemaker_inference_instance_type" {
  description = "Instance type of the SageMaker endpoint."
  type        = string
  default     = "ml.m5.large"
}

variable "extra_environment" {
  description = "More environment variables for every Sentiloop service (e.g. SENTILOOP_SAGEMAKER_INSTANCE_TYPE, SENTILOOP_RETRAIN_AUTO)."
  type        = map(string)
  default     = {}
}

variable "alarm_5xx_rate_percent" {
  description = "The 5xx alarm fires when more than this percentage of the load balancer's requests end in a 5xx (Envoy's or the load balancer's own) in 3 of 5 minutes."
  type        = number
  default     = 5

  validation {
    condition     = var.alarm_5xx_rate_percent > 0 && var.alarm_5xx_rate_percent < 100
    error_message = "alarm_5xx_rate_percent: a percentage between 0 and 100 (exclusive)."
  }
}

variable "alarm_latency_p99_seconds" {
  description = "The latency alarm fires when the p99 of the load balancer's TargetResponseTime (until Envoy's first response byte) is over this many seconds in 3 of 5 minutes."
  type        = number
  default     = 2

  validation {
    condition     = var.alarm_latency_p99_seconds > 0
    error_message = "alarm_latency_p99_seconds: a positive number of seconds."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
