# One customer-managed key for the artifacts bucket, the SNS topics, the log groups,
# the ECR repositories, the secrets and the metadata database (storage, Performance Insights).
resource "aws_kms_key" "main" {
  description             = "${var.name}: artifacts, events, logs, images, service data"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "main" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.main.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" means this key only; the account root statement is what lets IAM policies grant use of the key.
  #checkov:skip=CKV_AWS_111:As above: key policies always name Resource "*" (the key itself).
  #checkov:skip=CKV_AWS_356:As above: in a key policy "*" is the key itself, not every resource.
  statement {
    sid       = "AccountAdministersTheKey"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncryptsTheLogGroups"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values = [
        "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/${var.name}/*",
        "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/rds/instance/${local.database_identifier}/*",
      ]
    }
  }

  # CloudWatch alarms publish to the encrypted alarms topic with their own service
  # principal, which needs the key; the topic's policy limits which alarms may publish.
  statement {
    sid       = "CloudWatchAlarmsPublishEncrypted"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
  }

  statement {
    sid       = "SnsDeliversEncryptedEvents"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}
