# Security groups: clients -> ALB -> Envoy -> services; services -> PostgreSQL; tasks ->
# AWS APIs. Envoy and the services share `tasks`; only the services also have `services`,
# the one group the database admits.

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
    description = "DNS (Cloud Map names, through the VPC resolver)"
    from_port   = 53
    to_port     = 53
    protocol    = "udp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }
}

# The Sentiloop services (not Envoy, which holds no database credentials): the
# database's only clients. Egress names the VPC's range rather than the database's group,
# which would make the two groups refer to each other.
resource "aws_security_group" "services" {
  name        = "${var.name}-services"
  description = "Sentiloop services: clients of the metadata database"
  vpc_id      = var.vpc_id

  egress {
    description = "PostgreSQL (the metadata database)"
    from_port   = local.database_port
    to_port     = local.database_port
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.main.cidr_block]
  }
}

resource "aws_security_group" "database" {
  name        = "${var.name}-database"
  description = "Sentiloop metadata database (RDS PostgreSQL)"
  vpc_id      = var.vpc_id

  ingress {
    description     = "PostgreSQL from the Sentiloop services only"
    from_port       = local.database_port
    to_port         = local.database_port
    protocol        = "tcp"
    security_groups = [aws_security_group.services.id]
  }
}
