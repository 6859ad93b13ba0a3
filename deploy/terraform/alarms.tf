# Alarms on what clients see at the load balancer in front of Envoy: every request of
# every service passes there, so these two cover the whole mesh from the outside.
# Notifications go to a topic of their own: the events topic's subscribers filter on the
# event_type attribute, which alarm notifications do not carry.
resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.main.arn
}

resource "aws_sns_topic_policy" "alarms" {
  arn    = aws_sns_topic.alarms.arn
  policy = data.aws_iam_policy_document.alarms_topic.json
}

data "aws_iam_policy_document" "alarms_topic" {
  statement {
    sid       = "AccountOnly"
    actions   = ["sns:GetTopicAttributes", "sns:Subscribe", "sns:ListSubscriptionsByTopic", "sns:Publish"]
    resources = [aws_sns_topic.alarms.arn]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsOfThisDeployment"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alarms.arn]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:cloudwatch:${var.region}:${local.account_id}:alarm:${var.name}-*"]
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alarms.arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

locals {
  alb_dimensions = { LoadBalancer = aws_lb.main.arn_suffix }
  alarm_topics   = [aws_sns_topic.alarms.arn]
  # Both alarms look at one-minute datapoints and need 3 bad minutes out of the last 5:
  # at low traffic a single failed or slow request makes a whole minute look bad.
  alarm_periods    = 5
  alarm_datapoints = 3
}

resource "aws_cloudwatch_metric_alarm" "alb_5xx_rate" {
  alarm_name          = "${var.name}-alb-5xx-rate"
  alarm_description   = "More than ${var.alarm_5xx_rate_percent}% of the requests to ${aws_lb.main.name} ended in a 5xx (from Envoy or from the load balancer itself) in ${local.alarm_datapoints} of ${local.alarm_periods} minutes."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_5xx_rate_percent
  evaluation_periods  = local.alarm_periods
  datapoints_to_alarm = local.alarm_datapoints
  # No requests is no evidence of errors.
  treat_missing_data = "notBreaching"
  actions_enabled    = true
  alarm_actions      = local.alarm_topics
  ok_actions         = local.alarm_topics

  # The load balancer's own 5xx answers given before any target was chosen (such as a 503
  # while no Envoy task is registered) are not in RequestCount: adding them to the
  # denominator keeps a total outage from reading as "no data", which would not breach.
  # Those that had a target are then counted twice, which can only understate the rate.
  metric_query {
    id          = "error_rate"
    expression  = "100 * (FILL(target_5xx, 0) + FILL(elb_5xx, 0)) / (FILL(requests, 0) + FILL(elb_5xx, 0))"
    label       = "5xx responses (% of requests)"
    return_data = true
  }

  metric_query {
    id = "target_5xx"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      dimensions  = local.alb_dimensions
      period      = 60
      stat        = "Sum"
    }
  }

  metric_query {
    id = "elb_5xx"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      dimensions  = local.alb_dimensions
      period      = 60
      stat        = "Sum"
    }
  }

  metric_query {
    id = "requests"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = local.alb_dimensions
      period      = 60
      stat        = "Sum"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "alb_latency_p99" {
  alarm_name        = "${var.name}-alb-latency-p99"
  alarm_description = "p99 of the time Envoy took to start answering requests to ${aws_lb.main.name} was over ${var.alarm_latency_p99_seconds} s in ${local.alarm_datapoints} of ${local.alarm_periods} minutes."
  # TargetResponseTime ends when Envoy starts the response (its headers), which the
  # streams (watch, events/stream) send at once: they do not count their whole life. A
  # synchronous POST /retrain does count its whole wait, but it lands in one minute, and
  # one minute does not alarm.
  namespace           = "AWS/ApplicationELB"
  metric_name         = "TargetResponseTime"
  dimensions          = local.alb_dimensions
  extended_statistic  = "p99"
  period              = 60
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_latency_p99_seconds
  evaluation_periods  = local.alarm_periods
  datapoints_to_alarm = local.alarm_datapoints
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = local.alarm_topics
  ok_actions          = local.alarm_topics
}
