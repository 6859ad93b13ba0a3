# Several tasks of InferenceService and FeedbackService, scaled on their average CPU.
# The load balancer's targets are the Envoy tasks, not these services (Envoy finds their
# tasks through Cloud Map and spreads calls over them, least-request), so the ALB's
# per-target request count says nothing about them: CPU is the signal they do have.
# Predicting in-process is CPU-bound. The SageMaker endpoint is not Terraform's:
# ModelInitService creates it at run time with a variant named after each version, so
# its scaling (SageMakerVariantInvocationsPerInstance) can only be registered there.
resource "aws_appautoscaling_target" "service" {
  for_each = var.scaled_services

  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${aws_ecs_service.service[each.key].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = each.value.min
  max_capacity       = each.value.max
}

resource "aws_appautoscaling_policy" "service_cpu" {
  for_each = var.scaled_services

  name               = "${var.name}-${local.services[each.key].dns}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service[each.key].service_namespace
  resource_id        = aws_appautoscaling_target.service[each.key].resource_id
  scalable_dimension = aws_appautoscaling_target.service[each.key].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value = var.scaling_cpu_target_percent
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
    # Out quickly; in slowly, so that a lull between bursts keeps the tasks (a new
    # inference task loads its model before it serves).
    scale_out_cooldown = 60
    scale_in_cooldown  = 300
  }
}
