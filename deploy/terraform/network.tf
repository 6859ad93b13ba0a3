# Security groups: clients -> ALB -> Envoy -> services; services -> EFS; tasks -> AWS APIs.

resource "aws_security_group" "alb" {
  #checkov:skip=CKV_AWS_260:The public API listens on port 80 when no certificate is given (first trial) and otherwise only redirects it to HTTPS; allowed_cidrs narrows the clients.
  name        = "${var.name}-alb"
  description = "Sentiloop load balancer"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTP from clients (redirected to HTTPS when a certificate is set)"
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  ingress {
    description = "HTTPS (JSON and gRPC) from clients"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  egress {
    description = "To Envoy"
    from_port   = local.envoy_port
    to_port     = local.envoy_port
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }
}

data "aws_vpc" "main" {
  id = var.vpc_id
}

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "Sentiloop ECS tasks (Envoy and the services)"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Envoy from the load balancer"
    from_port       = local.envoy_port
    to_port         = local.envoy_port
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }

  ingress {
    description = "gRPC between the services and from Envoy"
    from_port   = 8000
    to_port     = 8006
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "gRPC to the other services"
    from_port   = 8000
    to_port     = 8006
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "HTTPS to the AWS APIs (S3, SNS, SageMaker, ECR, CloudWatch Logs)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "NFS to the EFS mount targets"
    from_port   = 2049
    to_port     = 2049
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }

  egress {
    description = "DNS (Cloud Map names, through the VPC resolver)"
    from_port   = 53
    to_port     = 53
    protocol    = "udp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }
}

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs"
  description = "Sentiloop service data (EFS)"
  vpc_id      = var.vpc_id

  ingress {
    description     = "NFS from the tasks"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }
}
