# ALB -> Envoy. Two target groups on the same Envoy port: HTTP/1.1 for JSON clients (the
# default), and gRPC (HTTP/2 end to end) for requests whose content-type is
# application/grpc; Envoy's listener speaks both (codec AUTO). gRPC through an ALB
# needs the HTTPS listener (ALBs speak HTTP/2 to clients only over TLS).
resource "aws_lb" "main" {
  #checkov:skip=CKV_AWS_91:Access logs need a separate log bucket with the ELB log-delivery policy; Envoy's access log (CloudWatch /<name>/envoy) records every request with its x-request-id.
  #checkov:skip=CKV2_AWS_20:Port 80 redirects to HTTPS whenever certificate_arn is set (aws_lb_listener.http_redirect); only a first trial without a certificate serves plain HTTP.
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is a per-team choice (cost, rules); attach one to this ALB with aws_wafv2_web_acl_association.
  name                       = "${var.name}-alb"
  load_balancer_type         = "application"
  internal                   = var.internal_alb
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection
  # Server streams (watch, events/stream) stay open: the idle timeout bounds silence.
  idle_timeout = 300
}

resource "aws_lb_target_group" "envoy_http" {
  #checkov:skip=CKV_AWS_378:TLS ends at the ALB; ALB to Envoy stays inside the VPC (private subnets, security groups). TLS to the targets would need certificates in the Envoy configuration that `sentiloop envoy-config` renders.
  name                 = "${var.name}-envoy-http"
  port                 = local.envoy_port
  protocol             = "HTTP"
  protocol_version     = "HTTP1"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    path     = "/health"
    protocol = "HTTP"
    # 503 = Envoy answers but a backend is degraded: Envoy itself is fine, and
    # replacing it would not help (the post-deploy check in CI wants 200).
    matcher             = "200,503"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_target_group" "envoy_grpc" {
  #checkov:skip=CKV_AWS_378:TLS ends at the ALB; ALB to Envoy stays inside the VPC (private subnets, security groups). TLS to the targets would need certificates in the Envoy configuration that `sentiloop envoy-config` renders.
  name                 = "${var.name}-envoy-grpc"
  port                 = local.envoy_port
  protocol             = "HTTP"
  protocol_version     = "GRPC"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    # The mesh's health RPC (what GET /health transcodes to). Any gRPC status shows that
    # Envoy answers gRPC; as for JSON, a degraded backend must not get Envoy replaced.
    path                = "/sentiloop.v1.MeshHealthService/GetMeshHealth"
    protocol            = "HTTP"
    matcher             = "0-99"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

# With a certificate: HTTPS (JSON + gRPC) on 443, and 80 redirects to it.
resource "aws_lb_listener" "https" {
  count = var.certificate_arn != "" ? 1 : 0

  load_balancer_arn = aws_lb.main.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.envoy_http.arn
  }
}

resource "aws_lb_listener_rule" "grpc" {
  count = var.certificate_arn != "" ? 1 : 0

  listener_arn = aws_lb_listener.https[0].arn
  priority     = 10

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.envoy_grpc.arn
  }

  condition {
    http_header {
      http_header_name = "content-type"
      values           = ["application/grpc*"]
    }
  }
}

resource "aws_lb_listener" "http_redirect" {
  count = var.certificate_arn != "" ? 1 : 0

  load_balancer_arn = aws_lb.main.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"
    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

# Without a certificate (a first trial only): plain HTTP on 80, JSON clients only.
resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Only created when certificate_arn is empty, for a first trial; set certificate_arn for HTTPS (this listener then becomes a redirect).
  #checkov:skip=CKV_AWS_103:As above: no TLS without a certificate.
  count = var.certificate_arn == "" ? 1 : 0

  load_balancer_arn = aws_lb.main.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.envoy_http.arn
  }
}
