terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.70, < 7.0"
    }
  }

  # State in S3, locked in DynamoDB. Both are created once per account by
  # ./bootstrap (see the README's "AWS deployment"). Backend blocks cannot read
  # variables: replace the placeholders, or keep them and pass real values with
  #   terraform init -backend-config="bucket=..." -backend-config="dynamodb_table=..." \
  #                  -backend-config="region=..."
  backend "s3" {
    bucket         = "REPLACE-ME-sentiloop-tfstate"
    key            = "sentiloop/terraform.tfstate"
    region         = "us-east-1"
    dynamodb_table = "REPLACE-ME-sentiloop-tflock"
    encrypt        = true
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ project = var.name, managed-by = "terraform" }, var.tags)
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}
