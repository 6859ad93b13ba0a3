# The metadata database of every service (feedback, versions, jobs, runs, events, ...):
# one RDS PostgreSQL instance, each service in a schema of its own that the service
# migrates itself at start (services/sentiloop/core/db.py). Being the one place any
# replica's state lives, it is what lets InferenceService and FeedbackService run several
# tasks, and any task be replaced at any time.
locals {
  database_identifier = "${var.name}-metadata"
  database_name       = "sentiloop"
  database_user       = "sentiloop"
  database_port       = 5432
}

resource "aws_db_subnet_group" "main" {
  name        = local.database_identifier
  description = "Sentiloop metadata database: the private subnets"
  subnet_ids  = var.private_subnet_ids
}

# TLS only (rds.force_ssl; the URL asks for it too with sslmode=require), and the log
# of schema changes and slow statements (not every statement: those carry texts).
resource "aws_db_parameter_group" "main" {
  name        = "${local.database_identifier}-pg${var.db_engine_version}"
  family      = "postgres${var.db_engine_version}"
  description = "Sentiloop metadata database: TLS only, DDL and slow statements logged"

  parameter {
    name         = "rds.force_ssl"
    value        = "1"
    apply_method = "pending-reboot"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# The password: drawn once into Secrets Manager (a value is drawn at every plan;
# ignore_changes keeps the first one), then read back from there by the instance and the
# URL, so the two always agree. Letters and digits only: it goes into a URL unescaped.
resource "aws_secretsmanager_secret" "database_password" {
  #checkov:skip=CKV2_AWS_57:Rotating needs the URL secret rewritten and every service task restarted with it; rotate by putting a new version here, applying (the instance and the URL follow) and redeploying.
  name                    = "${var.name}/database-password"
  description             = "Sentiloop metadata database: the ${local.database_user} user's password"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

data "aws_secretsmanager_random_password" "database" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret_version" "database_password" {
  secret_id     = aws_secretsmanager_secret.database_password.id
  secret_string = data.aws_secretsmanager_random_password.database.random_password

  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_db_instance" "main" {
  identifier     = local.database_identifier
  engine         = "postgres"
  engine_version = var.db_engine_version
  # A major version only: RDS picks its newest minor and applies the next ones itself
  # in the maintenance window.
  auto_minor_version_upgrade = true
  instance_class             = var.db_instance_class
  multi_az                   = var.db_multi_az

  db_name  = local.database_name
  username = local.database_user
  password = aws_secretsmanager_secret_version.database_password.secret_string
  port     = local.database_port

  storage_type          = "gp3"
  allocated_storage     = var.db_allocated_storage_gb
  max_allocated_storage = var.db_max_allocated_storage_gb
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.main.arn

  db_subnet_group_name   = aws_db_subnet_group.main.name
  vpc_security_group_ids = [aws_security_group.database.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.main.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  # Operators may sign in with IAM tokens (aws rds generate-db-auth-token) once a
  # database user is granted rds_iam; the services use the password in their URL.
  iam_database_authentication_enabled = var.db_iam_authentication

  backup_retention_period   = var.db_backup_retention_days
  backup_window             = "03:00-04:00"
  maintenance_window        = "sun:04:30-sun:05:30"
  copy_tags_to_snapshot     = true
  deletion_protection       = var.db_deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.database_identifier}-final"
  delete_automated_backups  = false

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.main.arn
  performance_insights_retention_period = 7
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]

  depends_on = [aws_cloudwatch_log_group.database]
}

# RDS would create these itself, unencrypted and kept forever.
resource "aws_cloudwatch_log_group" "database" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${local.database_identifier}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

# What the services read as SENTILOOP_DATABASE_URL (ECS puts it into their environment
# from here; it is never a plain environment value of the task definition).
resource "aws_secretsmanager_secret" "database_url" {
  #checkov:skip=CKV2_AWS_57:It follows the password secret (rotated there, see above): a rotation Lambda here would change the URL without changing the database's password.
  name                    = "${var.name}/database-url"
  description             = "Sentiloop SENTILOOP_DATABASE_URL (libpq URI of the metadata database, TLS required)"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "database_url" {
  secret_id     = aws_secretsmanager_secret.database_url.id
  secret_string = "postgresql://${local.database_user}:${aws_secretsmanager_secret_version.database_password.secret_string}@${aws_db_instance.main.address}:${aws_db_instance.main.port}/${local.database_name}?sslmode=require"
}

# Enhanced monitoring (OS metrics every minute) is published by RDS with this role.
data "aws_iam_policy_document" "rds_monitoring_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_trust.json
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
