locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  namespace  = "${var.name}.local"

  # One ECS service per Sentiloop service. image: "slim" (no torch) or "full" (CPU torch:
  # models in-process, local training). dns: the Cloud Map name (no "_" in host names).
  services = {
    inference    = { port = 8000, image = "full", cpu = 1024, memory = 4096, dns = "inference" }
    feedback     = { port = 8001, image = "slim", cpu = 256, memory = 512, dns = "feedback" }
    registry     = { port = 8002, image = "slim", cpu = 256, memory = 512, dns = "registry" }
    evaluation   = { port = 8003, image = "full", cpu = 1024, memory = 4096, dns = "evaluation" }
    retraining   = { port = 8004, image = "slim", cpu = 512, memory = 1024, dns = "retraining" }
    notification = { port = 8005, image = "slim", cpu = 256, memory = 512, dns = "notification" }
    model_init   = { port = 8006, image = "full", cpu = 2048, memory = 8192, dns = "model-init" }
  }

  envoy_port       = 8080
  envoy_admin_port = 9901

  # Object-store key prefixes (see services/sentiloop: datasets/, models/, code/ for the
  # SageMaker source bundle, feedback/ for snapshots and exports) each task may read or write.
  s3_access = {
    inference    = { read = ["models"], write = [] }
    feedback     = { read = ["feedback"], write = ["feedback"] }
    registry     = { read = ["models"], write = [] }
    evaluation   = { read = ["models", "datasets", "feedback"], write = [] }
    retraining   = { read = ["datasets", "feedback", "models"], write = ["datasets"] }
    notification = { read = [], write = [] }
    model_init   = { read = ["datasets", "models", "code"], write = ["datasets", "models", "code"] }
  }

  # SageMaker resources the services create or call: all named with this prefix.
  sagemaker_arn = "arn:${local.partition}:sagemaker:${var.region}:${local.account_id}"

  addresses = {
    for name, s in local.services :
    "SENTILOOP_${upper(name)}_ADDR" => "${s.dns}.${local.namespace}:${s.port}"
  }

  # The data directory is on the tmp volume: on ECS what remains under it is scratch
  # (metadata in PostgreSQL, objects in S3, credentials from Secrets Manager).
  common_environment = merge(
    local.addresses,
    {
      SENTILOOP_HOST                              = "0.0.0.0"
      SENTILOOP_DATA_DIR                          = "/tmp/sentiloop"
      SENTILOOP_OBJECT_STORE                      = "s3"
      SENTILOOP_S3_BUCKET                         = aws_s3_bucket.artifacts.id
      SENTILOOP_TRAINING_BACKEND                  = "sagemaker"
      SENTILOOP_ENDPOINT_BACKEND                  = "sagemaker"
      SENTILOOP_SAGEMAKER_ROLE_ARN                = aws_iam_role.sagemaker.arn
      SENTILOOP_SAGEMAKER_TRAINING_IMAGE          = var.sagemaker_training_image
      SENTILOOP_SAGEMAKER_INFERENCE_IMAGE         = var.sagemaker_inference_image
      SENTILOOP_SAGEMAKER_INSTANCE_TYPE           = var.sagemaker_training_instance_type
      SENTILOOP_SAGEMAKER_INFERENCE_INSTANCE_TYPE = var.sagemaker_inference_instance_type
      SENTILOOP_SAGEMAKER_ENDPOINT_NAME           = var.name
      SENTILOOP_SAGEMAKER_MODEL_PACKAGE_GROUP     = var.name
      AWS_REGION                                  = var.region
      AWS_DEFAULT_REGION                          = var.region
    },
    var.extra_environment,
  )

  service_environment = {
    notification = { SENTILOOP_SNS_TOPIC_ARN = aws_sns_topic.events.arn }
  }

  image = {
    slim = "${aws_ecr_repository.images["slim"].repository_url}:${var.image_tag}"
    full = "${aws_ecr_repository.images["full"].repository_url}:${var.image_tag}"
  }
}
