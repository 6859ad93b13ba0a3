# ----------------------------------------------------------------- ECS task execution
# Pulls the images and writes the logs; nothing else.
data "aws_iam_policy_document" "ecs_tasks_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-ecs-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # not scopable: the token is account-wide
  }

  statement {
    sid       = "PullImages"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = [for r in aws_ecr_repository.images : r.arn]
  }

  statement {
    sid       = "DecryptImages"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ecr.${var.region}.amazonaws.com"]
    }
  }

  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for g in aws_cloudwatch_log_group.service : "${g.arn}:*"]
  }

  # The credentials ECS puts into the service tasks' environment (secrets.tf) and the
  # database URL (database.tf); not the database password's own secret.
  statement {
    sid       = "ReadCredentials"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = concat([for s in aws_secretsmanager_secret.credential : s.arn], [aws_secretsmanager_secret.database_url.arn])
  }

  statement {
    sid       = "DecryptCredentials"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-images-write-logs"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# ----------------------------------------------------------------- task roles
# One role per service, each with only what that service does.
resource "aws_iam_role" "task" {
  for_each           = local.services
  name               = "${var.name}-${each.value.dns}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

resource "aws_iam_role" "envoy" {
  name               = "${var.name}-envoy-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "task" {
  for_each = local.services

  # HeadBucket / listing: key names only.
  statement {
    sid       = "ListArtifacts"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.artifacts.arn]
  }

  dynamic "statement" {
    for_each = length(local.s3_access[each.key].read) > 0 ? [1] : []
    content {
      sid       = "ReadArtifacts"
      actions   = ["s3:GetObject", "s3:GetObjectVersion"]
      resources = [for p in local.s3_access[each.key].read : "${aws_s3_bucket.artifacts.arn}/${p}/*"]
    }
  }

  dynamic "statement" {
    for_each = length(local.s3_access[each.key].write) > 0 ? [1] : []
    content {
      sid       = "WriteArtifacts"
      actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
      resources = [for p in local.s3_access[each.key].write : "${aws_s3_bucket.artifacts.arn}/${p}/*"]
    }
  }

  # The bucket's KMS key, only through S3 (and SNS for the notification service).
  statement {
    sid       = "UseKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com", "sns.${var.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = each.key == "notification" ? [1] : []
    content {
      sid       = "PublishEvents"
      actions   = ["sns:Publish", "sns:GetTopicAttributes"]
      resources = [aws_sns_topic.events.arn]
    }
  }

  dynamic "statement" {
    for_each = contains(["inference", "evaluation"], each.key) ? [1] : []
    content {
      sid       = "CallTheEndpoint"
      actions   = ["sagemaker:InvokeEndpoint", "sagemaker:DescribeEndpoint"]
      resources = ["${local.sagemaker_arn}:endpoint/${var.name}*"]
    }
  }

  dynamic "statement" {
    for_each = contains(["registry", "model_init"], each.key) ? [1] : []
    content {
      sid = "ModelPackages"
      actions = [
        "sagemaker:CreateModelPackageGroup",
        "sagemaker:DescribeModelPackageGroup",
        "sagemaker:CreateModelPackage",
        "sagemaker:DescribeModelPackage",
        "sagemaker:UpdateModelPackage",
        "sagemaker:ListModelPackages",
        "sagemaker:AddTags",
        "sagemaker:ListTags",
      ]
      resources = [
        "${local.sagemaker_arn}:model-package-group/${var.name}*",
        "${local.sagemaker_arn}:model-package/${var.name}*",
      ]
    }
  }

  dynamic "statement" {
    for_each = each.key == "model_init" ? [1] : []
    content {
      sid = "TrainAndServe"
      actions = [
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:StopTrainingJob",
        "sagemaker:CreateModel",
        "sagemaker:DescribeModel",
        "sagemaker:CreateEndpointConfig",
        "sagemaker:DescribeEndpointConfig",
        "sagemaker:CreateEndpoint",
        "sagemaker:UpdateEndpoint",
        "sagemaker:DeleteEndpoint",
        "sagemaker:DescribeEndpoint",
        # What Application Auto Scaling checks the caller may do to an endpoint it registers.
        "sagemaker:UpdateEndpointWeightsAndCapacities",
        "sagemaker:AddTags",
        "sagemaker:ListTags",
      ]
      resources = [
        "${local.sagemaker_arn}:training-job/${var.name}*",
        "${local.sagemaker_arn}:model/${var.name}*",
        "${local.sagemaker_arn}:endpoint-config/${var.name}*",
        "${local.sagemaker_arn}:endpoint/${var.name}*",
      ]
    }
  }

  dynamic "statement" {
    for_each = each.key == "model_init" ? [1] : []
    content {
      sid       = "ListTrainingJobs"
      actions   = ["sagemaker:ListTrainingJobs", "sagemaker:ListEndpoints"]
      resources = ["*"] # List* actions take no resource
    }
  }

  # The endpoint's autoscaling (SENTILOOP_SAGEMAKER_ENDPOINT_MAX_INSTANCES above the minimum):
  # ModelInit registers each deployed variant as a scalable target with a target-tracking
  # policy. A scalable target's ARN carries a random id, not the endpoint's name, so the
  # narrowest scope IAM offers is SageMaker variants' instance counts in this account.
  dynamic "statement" {
    for_each = each.key == "model_init" ? [1] : []
    content {
      sid = "AutoscaleTheEndpoint"
      actions = [
        "application-autoscaling:RegisterScalableTarget",
        "application-autoscaling:DeregisterScalableTarget",
        "application-autoscaling:PutScalingPolicy",
        "application-autoscaling:DeleteScalingPolicy",
      ]
      resources = ["arn:${local.partition}:application-autoscaling:${var.region}:${local.account_id}:scalable-target/*"]
      condition {
        test     = "StringEquals"
        variable = "application-autoscaling:service-namespace"
        values   = ["sagemaker"]
      }
      condition {
        test     = "StringEquals"
        variable = "application-autoscaling:scalable-dimension"
        values   = ["sagemaker:variant:DesiredInstanceCount"]
      }
    }
  }

  dynamic "statement" {
    for_each = each.key == "model_init" ? [1] : []
    content {
      sid = "DescribeAutoscaling"
      actions = [
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DescribeScalingPolicies",
      ]
      resources = ["*"] # Describe* actions take no resource
    }
  }

  # The alarms a target-tracking policy creates are named after its scalable target.
  dynamic "statement" {
    for_each = each.key == "model_init" ? [1] : []
    content {
      sid       = "AutoscalingAlarms"
      actions   = ["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"]
      resources = ["arn:${local.partition}:cloudwatch:${var.region}:${local.account_id}:alarm:TargetTracking-endpoint/${var.name}*"]
    }
  }

  # The first registration creates Application Auto Scaling's role for SageMaker endpoints.
  dynamic "statement" {
    for_each = each.key == "model_init" ? [1] : []
    content {
      sid       = "AutoscalingServiceLinkedRole"
      actions   = ["iam:CreateServiceLinkedRole"]
      resources = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"]
      condition {
        test     = "StringEquals"
        variable = "iam:AWSServiceName"
        values   = ["sagemaker.application-autoscaling.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = each.key == "model_init" ? [1] : []
    content {
      sid       = "HandTheRoleToSageMaker"
      actions   = ["iam:PassRole"]
      resources = [aws_iam_role.sagemaker.arn]
      condition {
        test     = "StringEquals"
        variable = "iam:PassedToService"
        values   = ["sagemaker.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "task" {
  for_each = local.services
  name     = "${var.name}-${each.value.dns}"
  role     = aws_iam_role.task[each.key].id
  policy   = data.aws_iam_policy_document.task[each.key].json
}

# ----------------------------------------------------------------- SageMaker execution
# What training jobs and endpoints run as: read the datasets, source bundles and init
# models, write the model artifacts, pull the HuggingFace containers, write their logs.
data "aws_iam_policy_document" "sagemaker_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "sagemaker" {
  name               = "${var.name}-sagemaker-execution"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_trust.json
}

data "aws_iam_policy_document" "sagemaker" {
  statement {
    sid       = "ListArtifacts"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.artifacts.arn]
  }

  statement {
    sid     = "ReadInputs"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.artifacts.arn}/datasets/*",
      "${aws_s3_bucket.artifacts.arn}/code/*",
      "${aws_s3_bucket.artifacts.arn}/models/*",
    ]
  }

  statement {
    sid       = "WriteModels"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.artifacts.arn}/models/*"]
  }

  statement {
    sid       = "UseKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # not scopable
  }

  statement {
    sid       = "PullFrameworkImages"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = [for account in var.sagemaker_image_account_ids : "arn:${local.partition}:ecr:${var.region}:${account}:repository/*"]
  }

  statement {
    sid = "WriteJobLogs"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    resources = [
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/*",
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/*:log-stream:*",
    ]
  }

  statement {
    sid       = "PublishJobMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # scoped by the namespace condition
    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/*"]
    }
  }
}

resource "aws_iam_role_policy" "sagemaker" {
  name   = "${var.name}-sagemaker"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.sagemaker.json
}
