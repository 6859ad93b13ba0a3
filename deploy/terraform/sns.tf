# Every event of the loop (training.*, model.*, retraining.*), published by
# NotificationService with the message attribute event_type for filter policies.
resource "aws_sns_topic" "events" {
  name              = "${var.name}-events"
  kms_master_key_id = aws_kms_key.main.arn
}

resource "aws_sns_topic_policy" "events" {
  arn    = aws_sns_topic.events.arn
  policy = data.aws_iam_policy_document.events_topic.json
}

data "aws_iam_policy_document" "events_topic" {
  statement {
    sid       = "AccountOnly"
    actions   = ["sns:GetTopicAttributes", "sns:Subscribe", "sns:ListSubscriptionsByTopic", "sns:Publish"]
    resources = [aws_sns_topic.events.arn]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.events.arn]
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
