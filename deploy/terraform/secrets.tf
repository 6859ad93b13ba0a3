# The credentials of services/sentiloop/core/auth.py: the operator's (every call that
# changes what is trained, registered, served or exported) and the services' own (calls
# between services, and the only one that publishes events). Generated once into Secrets
# Manager; ECS hands them to every service task as SENTILOOP_OPERATOR_TOKEN and
# SENTILOOP_SERVICE_TOKEN. Operators read theirs with
#   aws secretsmanager get-secret-value --secret-id NAME/operator-token
resource "aws_secretsmanager_secret" "credential" {
  #checkov:skip=CKV2_AWS_57:Rotation needs every service restarted with the new value (the services compare tokens, they hold no session); rotate by putting a new version and redeploying.
  for_each                = toset(["operator", "service"])
  name                    = "${var.name}/${each.key}-token"
  description             = "Sentiloop ${each.key} bearer token"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

# A value is drawn at every plan; ignore_changes keeps the first one stored.
data "aws_secretsmanager_random_password" "credential" {
  for_each            = aws_secretsmanager_secret.credential
  password_length     = 43
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret_version" "credential" {
  for_each      = aws_secretsmanager_secret.credential
  secret_id     = each.value.id
  secret_string = data.aws_secretsmanager_random_password.credential[each.key].random_password

  lifecycle {
    ignore_changes = [secret_string]
  }
}
