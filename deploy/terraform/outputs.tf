output "url" {
  description = "Where clients reach Sentiloop (GET /health, POST /predict, ...)."
  value       = var.certificate_arn != "" ? "https://${aws_lb.main.dns_name}" : "http://${aws_lb.main.dns_name}"
}

output "artifacts_bucket" {
  description = "The S3 bucket of datasets, model artifacts, snapshots and feedback exports."
  value       = aws_s3_bucket.artifacts.id
}

output "ecr_repositories" {
  description = "Image repositories: slim (no torch) and full (CPU torch)."
  value       = { for k, r in aws_ecr_repository.images : k => r.repository_url }
}

output "sns_topic_arn" {
  description = "The event topic (subscribe with a filter policy on event_type)."
  value       = aws_sns_topic.events.arn
}

output "alarm_topic_arn" {
  description = "Where the CloudWatch alarms notify (subscribe to it for e-mails or a pager)."
  value       = aws_sns_topic.alarms.arn
}

output "alarm_names" {
  description = "The CloudWatch alarms on the load balancer: 5xx rate and p99 latency."
  value       = [aws_cloudwatch_metric_alarm.alb_5xx_rate.alarm_name, aws_cloudwatch_metric_alarm.alb_latency_p99.alarm_name]
}

output "sagemaker_execution_role_arn" {
  description = "The role SageMaker training jobs and endpoints run as."
  value       = aws_iam_role.sagemaker.arn
}

output "ecs_cluster" {
  description = "The ECS cluster name."
  value       = aws_ecs_cluster.main.name
}

output "ecs_services" {
  description = "ECS service names, for `aws ecs wait services-stable`."
  value       = concat([for s in aws_ecs_service.service : s.name], [aws_ecs_service.envoy.name])
}

output "service_discovery_namespace" {
  description = "Private DNS namespace where the services find each other."
  value       = aws_service_discovery_private_dns_namespace.main.name
}

output "database_endpoint" {
  description = "The metadata database (RDS PostgreSQL), host:port; reachable from the service tasks only."
  value       = aws_db_instance.main.endpoint
}

output "database_url_secret" {
  description = "The Secrets Manager secret holding SENTILOOP_DATABASE_URL (aws secretsmanager get-secret-value --secret-id ...)."
  value       = aws_secretsmanager_secret.database_url.name
}
