"""The deployment files (deploy/, .github/workflows/ci.yml), checked offline: there is
no Docker engine, compose plugin or Terraform provider here.

* the linters that `make check-deploy` runs: hadolint, actionlint (+ shellcheck), and
  checkov, whose JSON report must show no parsing error and no failed check;
* docker-compose.yml's structure with PyYAML (what `docker compose config` would
  reject: unknown depends_on targets or conditions, undeclared volumes, bad ports,
  build targets the Dockerfile lacks), and `docker compose config` itself where the
  compose plugin exists;
* the Envoy configuration rendered for compose and for ECS (Cloud Map names) passes
  `envoy --mode validate`;
* the image's health check against a real service;
* Terraform, compose and the Dockerfile agree on the services, ports and images;
* the metadata database: compose runs PostgreSQL (password drawn once, not published)
  for every service, and Terraform an encrypted RDS instance that only the services reach,
  its URL handed to the tasks from Secrets Manager; inference and feedback autoscale;
* the monitoring files: the Grafana dashboard's queries use only metrics the services
  export, Prometheus scrapes both Envoy endpoints (the merged one with the operator
  token), Prometheus and Grafana stay on loopback with pinned images, and the CloudWatch
  alarms watch the load balancer."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from postgres import PostgresServer
from prometheus_client import Histogram

from sentiloop.core import metrics
from sentiloop.core.auth import Role
from sentiloop.core.config import SERVICES, env_name
from sentiloop.core.envoy_config import ENVOY_STATS_PATH
from sentiloop.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
TERRAFORM = DEPLOY / "terraform"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sentiloop.json"
BIN = Path(sys.executable).parent
# Services that load models or train in-process: the image with torch.
FULL_IMAGE = {"inference", "evaluation", "model_init"}
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def tool(name: str) -> str:
    beside = BIN / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make venv` (it is in the dev extra)")
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, **kwargs
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_service_of(compose: dict[str, Any], sentiloop_service: str) -> tuple[str, Any]:
    for name, spec in compose["services"].items():
        command = spec.get("command") or []
        if command[-2:] == ["sentiloop.serve", sentiloop_service]:
            return name, spec
    raise AssertionError(f"no compose service runs `sentiloop.serve {sentiloop_service}`")


def dockerfile_stages() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), re.M | re.I))


# ----------------------------------------------------------------------------- linters


def test_hadolint_passes() -> None:
    result = run([tool("hadolint"), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_passes() -> None:
    tool("shellcheck")  # actionlint checks the run: scripts with it when it is on PATH
    result = run([tool("actionlint"), str(WORKFLOW)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing_unexplained() -> None:
    checkov = Path(sys.prefix) / "checkov" / "bin" / "checkov"
    if not checkov.is_file():
        found = shutil.which("checkov")
        if found is None:
            pytest.skip("checkov is installed by `make check-deploy` (into .venv/checkov)")
        checkov = Path(found)
    args = ["--skip-download", "--framework", "terraform", "-d", str(TERRAFORM), "-o", "json"]
    result = run([str(checkov), *args])
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    for each in reports:
        summary = each["summary"]
        assert summary["parsing_errors"] == 0, each["results"].get("parsing_errors")
        failed = [
            f"{c['check_id']} {c['resource']} ({c['file_path']})"
            for c in each["results"]["failed_checks"]
        ]
        assert not failed, failed
        # Every skip says why.
        for skipped in each["results"].get("skipped_checks", []):
            assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_targets_user_and_torch_pin() -> None:
    text = DOCKERFILE.read_text()
    assert {"slim", "full"} <= dockerfile_stages()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1)), base
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    # Both runtime targets drop root; the health check is declared.
    for stage in ("slim", "full"):
        body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 10001", body, re.M), stage
    assert "HEALTHCHECK" in text


# ----------------------------------------------------------------------------- compose


def test_compose_structure(compose: dict[str, Any]) -> None:
    services: dict[str, Any] = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    stages = dockerfile_stages()
    for name, spec in services.items():
        assert "image" in spec or "build" in spec, name
        build = spec.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
            assert build.get("target") in stages, (name, build.get("target"))
        for target, condition in (spec.get("depends_on") or {}).items():
            assert target in services, (name, target)
            assert condition["condition"] in DEPENDS_ON_CONDITIONS, (name, condition)
            if condition["condition"] == "service_healthy":
                check = services[target].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (name, target)
        for volume in spec.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), (name, source)
            else:
                assert source in declared_volumes, (name, source)
        for port in spec.get("ports") or []:
            pattern = r"(127\.0\.0\.1:)?(\$\{[A-Z_]+:-\d+\}|\d+):\d+"
            assert re.fullmatch(pattern, str(port)), (name, port)
        check = spec.get("healthcheck") or {}
        if not check.get("disable"):
            assert check.get("test", [None])[0] == "CMD", name
    # No dependency cycles (compose refuses them).
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"depends_on cycle through {name}"
        if name in done:
            return
        visiting.add(name)
        for target in services[name].get("depends_on") or {}:
            visit(target)
        visiting.discard(name)
        done.add(name)

    for name in services:
        visit(name)


def test_compose_runs_every_service_in_s3_mode(compose: dict[str, Any]) -> None:
    services: dict[str, Any] = compose["services"]
    for service, (port, _) in SERVICES.items():
        name, spec = compose_service_of(compose, service)
        env = spec["environment"]
        assert spec["build"]["target"] == ("full" if service in FULL_IMAGE else "slim"), name
        assert spec["healthcheck"]["test"][-1] == service, name
        assert env["SENTILOOP_OBJECT_STORE"] == "s3"
        assert env["SENTILOOP_S3_BUCKET"] and env["SENTILOOP_S3_ENDPOINT_URL"]
        assert any(v.endswith(":/data") for v in spec["volumes"]), name
        assert spec["depends_on"]["init-bucket"]["condition"] == "service_completed_successfully"
        # Every other service is reachable at the address given to this one.
        for other, (other_port, _) in SERVICES.items():
            host, _, addr_port = env[env_name(other, "ADDR")].rpartition(":")
            assert compose_service_of(compose, other)[0] == host
            assert int(addr_port) == other_port
        assert port == int(env[env_name(service, "ADDR")].rpartition(":")[2])
    envoy = services["envoy"]
    assert "8080" in envoy["ports"][0]
    assert set(envoy["depends_on"]) == {compose_service_of(compose, s)[0] for s in SERVICES}
    assert "seaweedfs" in services


def test_docker_compose_config_where_the_plugin_exists() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    if run(["docker", "compose", "version"]).returncode != 0:
        pytest.skip("no docker compose plugin here; the structure is checked with PyYAML")
    result = run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"])
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- Envoy


def envoy_validates(env: dict[str, str], tmp_path: Path) -> str:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SENTILOOP_")} | {
        "SENTILOOP_HOST": "0.0.0.0",
        "SENTILOOP_ENVOY_HOST": "0.0.0.0",
        **env,
    }
    rendered = subprocess.run(
        [sys.executable, "-m", "sentiloop.cli", "envoy-config"],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
        timeout=60,
    ).stdout
    config = tmp_path / "envoy.yaml"
    config.write_text(rendered)
    result = run([tool("envoy"), "--mode", "validate", "-c", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    return rendered


def test_envoy_config_for_compose_validates(compose: dict[str, Any], tmp_path: Path) -> None:
    env = {
        # What compose makes of `${VAR:-default}` when VAR is unset.
        k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
        for k, v in compose["services"]["envoy"]["environment"].items()
        if k.startswith("SENTILOOP_")
    }
    rendered = envoy_validates(env, tmp_path)
    assert "address: model-init" in rendered and "address: 0.0.0.0" in rendered


def terraform_services() -> dict[str, dict[str, str]]:
    text = (TERRAFORM / "locals.tf").read_text()
    block = text.split("services = {", 1)[1].split("\n  }\n", 1)[0]
    services = {}
    for name, body in re.findall(r"^\s+(\w+)\s+=\s+\{(.*)\}\s*$", block, re.M):
        services[name] = dict(re.findall(r'(\w+)\s*=\s*"?([\w-]+)"?', body))
    return services


def test_terraform_agrees_with_the_service_list(tmp_path: Path) -> None:
    services = terraform_services()
    assert set(services) == set(SERVICES)
    for name, spec in services.items():
        assert int(spec["port"]) == SERVICES[name][0], name
        assert spec["image"] == ("full" if name in FULL_IMAGE else "slim"), name
        assert re.fullmatch(r"[a-z][a-z0-9-]*", spec["dns"]), name  # a host name: no "_"
    # The configuration Envoy renders on ECS, with the Cloud Map names, validates.
    env = {
        env_name(name, "ADDR"): f"{spec['dns']}.sentiloop.local:{spec['port']}"
        for name, spec in services.items()
    }
    rendered = envoy_validates(env, tmp_path)
    assert "address: model-init.sentiloop.local" in rendered


def test_terraform_references_resolve() -> None:
    """What `terraform validate` would catch first, without providers: every resource,
    data source, variable and local that is referenced is declared, in each module."""
    for module in (TERRAFORM, TERRAFORM / "bootstrap"):
        text = "\n".join(p.read_text() for p in sorted(module.glob("*.tf")))
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        resources = set(re.findall(r'^resource\s+"(\w+)"\s+"(\w+)"', code, re.M))
        data = set(re.findall(r'^data\s+"(\w+)"\s+"(\w+)"', code, re.M))
        variables = set(re.findall(r'^variable\s+"(\w+)"', code, re.M))
        locals_ = set()
        for block in re.findall(r"^locals \{\n(.*?)^\}", code, re.M | re.S):
            locals_ |= set(re.findall(r"^  (\w+)\s*=", block, re.M))
        for kind, name in re.findall(r"(?<![\w.])data\.(\w+)\.(\w+)", code):
            assert (kind, name) in data, f"{module.name}: data.{kind}.{name} is not declared"
        for kind, name in re.findall(r"(?<![\w.\"/])(aws_\w+)\.(\w+)", code):
            assert (kind, name) in resources, f"{module.name}: {kind}.{name} is not declared"
        for name in re.findall(r"(?<![\w.])var\.(\w+)", code):
            assert name in variables, f"{module.name}: var.{name} is not declared"
        for name in re.findall(r"(?<![\w.])local\.(\w+)", code):
            assert name in locals_, f"{module.name}: local.{name} is not declared"
        assert code.count("{") == code.count("}"), f"{module.name}: unbalanced braces"


ATTRIBUTE = re.compile(r"^(\s*)([A-Za-z_][\w-]*)(\s*)=(?!=)\s*(.*)$")


def fmt_problems(path: Path) -> list[str]:
    problems = []
    run_: list[tuple[int, str, str, str]] = []  # (line, indent, key, gap before "=")

    def flush() -> None:
        if run_:
            width = max(len(key) for _, _, key, _ in run_)
            for number, _, key, gap in run_:
                if len(gap) != width - len(key) + 1:
                    problems.append(f"{path.name}:{number}: '{key} =' is not aligned")
            run_.clear()

    for number, line in enumerate(path.read_text().split("\n"), 1):
        if "\t" in line or line != line.rstrip():
            problems.append(f"{path.name}:{number}: tab or trailing blank")
        if line.strip() and (len(line) - len(line.lstrip())) % 2:
            problems.append(f"{path.name}:{number}: indentation is not a multiple of 2")
        match = ATTRIBUTE.match(line)
        if not match:
            flush()
            continue
        indent, key, gap, value = match.groups()
        if run_ and indent != run_[0][1]:
            flush()
        value = value.split(" #", 1)[0]
        multi_line = sum(map(value.count, "[{(")) > sum(map(value.count, "]})"))
        if multi_line:
            flush()  # a multi-line value stands alone
        run_.append((number, indent, key, gap))
        if multi_line:
            flush()
    flush()
    return problems


def test_terraform_layout_follows_terraform_fmt() -> None:
    """CI runs `terraform fmt -check`; terraform is not installed here, so this checks
    what fmt changes most often: two-space indentation, no tabs or trailing blanks, and
    `=` aligned across consecutive one-line attributes (a comment, blank line, block or
    multi-line value ends such a run)."""
    problems = [p for path in sorted(TERRAFORM.rglob("*.tf")) for p in fmt_problems(path)]
    assert not problems, problems


# ----------------------------------------------------------------------------- metadata database


def test_compose_services_use_postgres(compose: dict[str, Any]) -> None:
    services: dict[str, Any] = compose["services"]
    postgres = services["postgres"]
    image, _, tag = postgres["image"].partition(":")
    assert image == "postgres" and re.fullmatch(r"1[6-9](\.\d+)?-alpine", tag), postgres["image"]
    # Only the compose network reaches it, and only with the drawn password.
    assert not postgres.get("ports") and not postgres.get("expose")
    env = postgres["environment"]
    assert "POSTGRES_PASSWORD" not in env and "POSTGRES_HOST_AUTH_METHOD" not in env
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"] and "127.0.0.1" in test, test
    mounts = dict(volume.split(":")[1::-1] for volume in postgres["volumes"])
    assert mounts["/var/lib/postgresql/data"] in compose["volumes"]
    # The password file the image reads is the one init-database draws, in the volume the
    # services read theirs from.
    password_file = PurePosixPath(env["POSTGRES_PASSWORD_FILE"])
    credentials = mounts[str(password_file.parent)]
    assert f"{credentials}:{password_file.parent}:ro" in postgres["volumes"]
    assert postgres["depends_on"]["init-database"]["condition"] == "service_completed_successfully"
    init = services["init-database"]
    folder = init["command"][-1]
    assert init["command"][:2] == ["python", "/app/deploy/init_database.py"]
    assert f"{credentials}:{folder}" in init["volumes"]
    assert password_file.name == "postgres.password"
    for service in SERVICES:
        name, spec = compose_service_of(compose, service)
        url = urlsplit(spec["environment"]["SENTILOOP_DATABASE_URL"])
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432), name
        assert url.username == env["POSTGRES_USER"] and url.path == f"/{env['POSTGRES_DB']}"
        assert url.password is None, f"{name}: a password in the URL"
        pgpass = PurePosixPath(spec["environment"]["PGPASSFILE"])
        assert pgpass == PurePosixPath(folder) / "postgres.pgpass", name
        assert f"{credentials}:{folder}" in spec["volumes"], name
        assert spec["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_init_database_password_reaches_libpq(
    tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What compose does: draw the password once, then connect with a URL that has none,
    libpq taking it from the password file (the test server trusts every login, so
    this shows which password libpq would send)."""
    folder = tmp_path / "secrets"
    script = [sys.executable, str(DEPLOY / "init_database.py"), str(folder)]
    for _ in range(2):  # a second start keeps the first password
        subprocess.run(script, check=True, capture_output=True, timeout=60)
    password = (folder / "postgres.password").read_text().strip()
    pgpass = folder / "postgres.pgpass"
    assert len(password) >= 40
    assert pgpass.read_text() == f"*:*:*:sentiloop:{password}\n"
    for path in (folder / "postgres.password", pgpass):
        assert path.stat().st_mode & 0o077 == 0, path
    url = postgres.url("postgres")
    assert urlsplit(url).password is None
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with psycopg.connect(url) as connection:
        assert connection.info.password == password


def terraform_code() -> str:
    text = "\n".join(p.read_text() for p in sorted(TERRAFORM.glob("*.tf")))
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def terraform_block(code: str, header: str) -> str:
    """The body of the top-level block that starts with ``header``."""
    start = code.index(header + " {\n")
    return code[start : code.index("\n}\n", start)]


def test_terraform_database_is_private_encrypted_and_tls_only() -> None:
    code = terraform_code()
    database = terraform_block(code, 'resource "aws_db_instance" "main"')
    for setting in (
        r'engine\s*=\s*"postgres"',
        r"storage_encrypted\s*=\s*true",
        r"kms_key_id\s*=\s*aws_kms_key\.main\.arn",
        r"publicly_accessible\s*=\s*false",
        r"skip_final_snapshot\s*=\s*false",
        r"deletion_protection\s*=\s*var\.db_deletion_protection",
        r"performance_insights_kms_key_id\s*=\s*aws_kms_key\.main\.arn",
        r"vpc_security_group_ids\s*=\s*\[aws_security_group\.database\.id\]",
        r"db_subnet_group_name\s*=\s*aws_db_subnet_group\.main\.name",
        r"parameter_group_name\s*=\s*aws_db_parameter_group\.main\.name",
    ):
        assert re.search(setting, database), setting
    variable = re.compile(r'^variable "(\w+)" \{\n(.*?)^\}', re.M | re.S)
    variables = dict(variable.findall(code))
    assert re.search(r"default\s*=\s*true", variables["db_deletion_protection"])
    assert re.search(r'default\s*=\s*"1[67]"', variables["db_engine_version"])
    assert "subnet_ids  = var.private_subnet_ids" in terraform_block(
        code, 'resource "aws_db_subnet_group" "main"'
    )
    parameters = terraform_block(code, 'resource "aws_db_parameter_group" "main"')
    assert re.search(r'name\s*=\s*"rds\.force_ssl"\n\s*value\s*=\s*"1"', parameters)
    url = terraform_block(code, 'resource "aws_secretsmanager_secret_version" "database_url"')
    assert re.search(r'secret_string\s*=\s*"postgresql://[^"]*\?sslmode=require"', url)
    # The database admits PostgreSQL from the services' group, nothing else; Envoy (which
    # has no credentials) is not in that group.
    group = terraform_block(code, 'resource "aws_security_group" "database"')
    (ingress,) = re.findall(r"ingress \{(.*?)\n  \}", group, re.S)
    assert "cidr_blocks" not in ingress and "self" not in ingress
    assert re.search(r"security_groups\s*=\s*\[aws_security_group\.services\.id\]", ingress)
    assert re.search(r"from_port\s*=\s*local\.database_port", ingress)
    assert "egress" not in group
    assert "aws_security_group.services.id" in terraform_block(
        code, 'resource "aws_ecs_service" "service"'
    )
    assert "aws_security_group.services" not in terraform_block(
        code, 'resource "aws_ecs_service" "envoy"'
    )
    # SQLite on EFS is gone with it.
    assert "aws_efs" not in code and "elasticfilesystem" not in code


def test_terraform_tasks_take_the_database_url_from_secrets_manager() -> None:
    code = terraform_code()
    task = terraform_block(code, 'resource "aws_ecs_task_definition" "service"')
    secrets = task.split("secrets = ", 1)[1].split("mountPoints", 1)[0]
    entry = (
        'name = "SENTILOOP_DATABASE_URL", valueFrom = aws_secretsmanager_secret.database_url.arn'
    )
    assert entry in secrets
    # Never a plain value of the environment (locals' maps of it, extra_environment).
    assert not re.search(r"^\s*SENTILOOP_DATABASE_URL\s*=", code, re.M)
    assert not re.search(r'name\s*=\s*"SENTILOOP_DATABASE_URL",\s*value\s*=', code)
    # The execution role reads the URL, not the password's own secret; no task role
    # reads either.
    execution = terraform_block(code, 'data "aws_iam_policy_document" "execution"')
    assert "aws_secretsmanager_secret.database_url.arn" in execution
    assert "database_password" not in execution
    assert "secretsmanager" not in terraform_block(code, 'data "aws_iam_policy_document" "task"')
    for name in ("database_password", "database_url"):
        secret = terraform_block(code, f'resource "aws_secretsmanager_secret" "{name}"')
        assert re.search(r"kms_key_id\s*=\s*aws_kms_key\.main\.arn", secret), name
    # The data directory is scratch on the tmp volume (the root filesystem is read-only).
    assert re.search(r'SENTILOOP_DATA_DIR\s*=\s*"/tmp/', code)


def test_terraform_scales_inference_and_feedback() -> None:
    code = terraform_code()
    scaled = terraform_block(code, 'variable "scaled_services"')
    defaults = dict(re.findall(r"^\s+(\w+)\s*=\s*\{\s*min\s*=\s*(\d+),\s*max\s*=", scaled, re.M))
    assert set(defaults) == {"inference", "feedback"}
    assert all(int(minimum) >= 2 for minimum in defaults.values()), defaults
    target = terraform_block(code, 'resource "aws_appautoscaling_target" "service"')
    assert "for_each = var.scaled_services" in target
    assert 'scalable_dimension = "ecs:service:DesiredCount"' in target
    assert "aws_ecs_service.service[each.key].name" in target
    policy = terraform_block(code, 'resource "aws_appautoscaling_policy" "service_cpu"')
    assert 'policy_type        = "TargetTrackingScaling"' in policy
    assert '"ECSServiceAverageCPUUtilization"' in policy
    service = terraform_block(code, 'resource "aws_ecs_service" "service"')
    # Terraform leaves the task count to the autoscaler once the service exists.
    assert re.search(r"ignore_changes\s*=\s*\[desired_count\]", service)
    assert "var.scaled_services" in service.split("desired_count", 1)[1].split("\n", 1)[0]


# ----------------------------------------------------------------------------- monitoring


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def exported_metric_names() -> set[str]:
    """The sentiloop_* series a scrape of GET /metrics can hold: sentiloop.core.metrics'
    names, each histogram also as its _bucket, _count and _sum series."""
    names = set(metrics.METRIC_NAMES)
    histograms = {
        family.name
        for value in vars(metrics).values()
        if isinstance(value, Histogram)
        for family in value.describe()
    }
    assert histograms <= names, histograms - names
    return names | {f"{h}{suffix}" for h in histograms for suffix in ("_bucket", "_count", "_sum")}


def test_dashboard_queries_use_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    expressions = [v["definition"] for v in variables.values() if v["type"] == "query"]
    ids = [panel["id"] for panel in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels(dashboard):
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel.get("datasource") == datasource, title
        assert panel.get("targets"), title
        for target in panel["targets"]:
            assert target.get("datasource") == datasource, title
            expr = target["expr"]
            assert expr.strip(), title
            for opening, closing in ("()", "{}", "[]"):
                assert expr.count(opening) == expr.count(closing), (title, expr)
            expressions.append(expr)
    used = {name for expr in expressions for name in re.findall(r"\bsentiloop_\w+", expr)}
    unknown = used - exported_metric_names()
    assert used and not unknown, f"not exported by sentiloop.core.metrics: {sorted(unknown)}"
    # The panels the dashboard is for: each family appears in some query.
    for family in (
        "sentiloop_rpc_duration_seconds_bucket",
        "sentiloop_served_model_info",
        "sentiloop_drift_score",
        "sentiloop_drift_token_divergence",
        "sentiloop_drift_confidence_shift",
        "sentiloop_drift_window_size",
        "sentiloop_shadow_predictions_total",
        "sentiloop_shadow_skipped_total",
        "sentiloop_shadow_agreement",
    ):
        assert family in used, family
    envoy = " ".join(expressions)
    assert "envoy_http_downstream_rq_xx" in envoy and "envoy_cluster_upstream_rq_time" in envoy


def test_grafana_provisioning_matches_compose(compose: dict[str, Any]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (prometheus,) = [s for s in sources["datasources"] if s["type"] == "prometheus"]
    # The dashboard's data-source variable defaults to the provisioned one.
    assert variables["DS_PROMETHEUS"]["current"]["value"] == prometheus["uid"]
    host, _, port = prometheus["url"].removeprefix("http://").partition(":")
    assert host in compose["services"] and int(port) == 9090
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/sentiloop.yml").read_text())
    (provider,) = providers["providers"]
    grafana = compose["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode)
    # The provider reads the folder compose mounts the repository's dashboards into.
    source, mode = mounts[provider["options"]["path"]]
    assert (COMPOSE.parent / source / DASHBOARD.name).resolve() == DASHBOARD and mode == ["ro"]
    source, mode = mounts["/etc/grafana/provisioning"]
    assert (COMPOSE.parent / source).resolve() == GRAFANA / "provisioning" and mode == ["ro"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_prometheus_scrapes_both_envoy_endpoints(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"sentiloop", "envoy"}
    envoy_port = compose["services"]["envoy"]["environment"]["SENTILOOP_ENVOY_PORT"]
    for job in jobs.values():
        assert job["static_configs"] == [{"targets": [f"envoy:{envoy_port}"]}], job
    merged, envoy = jobs["sentiloop"], jobs["envoy"]
    assert merged["metrics_path"] == "/metrics"
    # Each sample's own `instance` (the process) must survive the scrape.
    assert merged["honor_labels"] is True
    credentials = PurePosixPath(merged["authorization"]["credentials_file"])
    assert credentials.name == f"{Role.OPERATOR}.token"
    assert envoy["metrics_path"] == ENVOY_STATS_PATH and "authorization" not in envoy
    # The token comes from the volume the services write it to, mounted read-only, by
    # the user that owns it (the file is owner-only).
    prometheus = compose["services"]["prometheus"]
    assert f"credentials:{credentials.parent}:ro" in prometheus["volumes"]
    _, feedback = compose_service_of(compose, "feedback")
    assert f"credentials:{credentials.parent}" in feedback["volumes"]
    assert prometheus["user"].split(":")[0] == "10001"
    assert re.search(r"^USER 10001:", DOCKERFILE.read_text(), re.M)
    config_mount = f"./prometheus/{PROMETHEUS_CONFIG.name}:/etc/prometheus/prometheus.yml:ro"
    assert config_mount in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_compose_monitoring_is_pinned_and_on_loopback(compose: dict[str, Any]) -> None:
    for name, repository in (("prometheus", "prom/prometheus"), ("grafana", "grafana/grafana")):
        spec = compose["services"][name]
        image, _, tag = spec["image"].partition(":")
        assert image == repository and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), spec["image"]
        assert spec["ports"], name
        for port in spec["ports"]:
            assert str(port).startswith("127.0.0.1:"), (name, port)
        for volume in spec["volumes"]:
            if volume.startswith("."):
                assert volume.endswith(":ro"), (name, volume)


def test_grafana_admin_password_has_no_weak_default(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    environment = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in environment
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    shell, flag, script = grafana["entrypoint"]
    assert (shell, flag) == ("sh", "-c") and script.endswith("exec /run.sh")
    # Run the entrypoint as the container would (compose turns $$ into $), with a
    # stand-in for Grafana's /run.sh that prints the password Grafana would get.
    script = script.replace("$$", "$").replace(
        "exec /run.sh", "printenv GF_SECURITY_ADMIN_PASSWORD"
    )
    base = {"PATH": os.environ.get("PATH", "")}

    def password(**env: str) -> str:
        result = subprocess.run(
            ["sh", "-c", script], env=base | env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert password(GRAFANA_ADMIN_PASSWORD="chosen-by-operator") == "chosen-by-operator"
    first, second = password(GRAFANA_ADMIN_PASSWORD=""), password()
    assert len(first) >= 24 and first != second and "admin" not in (first, second)


def test_terraform_alarms_watch_the_alb() -> None:
    text = (TERRAFORM / "alarms.tf").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    alarms = dict(
        re.findall(
            r'^resource "aws_cloudwatch_metric_alarm" "(\w+)" \{\n(.*?)^\}', code, re.M | re.S
        )
    )
    assert set(alarms) == {"alb_5xx_rate", "alb_latency_p99"}
    assert re.search(r"alb_dimensions\s*=\s*\{\s*LoadBalancer\s*=\s*aws_lb\.main\.arn_suffix", code)
    assert re.search(r"alarm_topics\s*=\s*\[aws_sns_topic\.alarms\.arn\]", code)
    for name, body in alarms.items():
        assert re.search(r'treat_missing_data\s*=\s*"notBreaching"', body), name
        assert re.search(r"\balarm_actions\s*=\s*local\.alarm_topics", body), name
        assert re.search(r"\bok_actions\s*=\s*local\.alarm_topics", body), name
        metric_names = re.findall(r'metric_name\s*=\s*"(\w+)"', body)
        dimensions = re.findall(r"^\s*dimensions\s*=\s*(\S+)", body, re.M)
        assert metric_names and dimensions == ["local.alb_dimensions"] * len(metric_names), name
    errors = alarms["alb_5xx_rate"]
    assert set(re.findall(r'metric_name\s*=\s*"(\w+)"', errors)) == {
        "HTTPCode_Target_5XX_Count",
        "HTTPCode_ELB_5XX_Count",
        "RequestCount",
    }
    assert re.search(r"threshold\s*=\s*var\.alarm_5xx_rate_percent", errors)
    (expression,) = re.findall(r'expression\s*=\s*"([^"]+)"', errors)
    assert expression.startswith("100 * (") and "target_5xx" in expression and "/" in expression
    latency = alarms["alb_latency_p99"]
    assert re.search(r'metric_name\s*=\s*"TargetResponseTime"', latency)
    assert re.search(r'extended_statistic\s*=\s*"p99"', latency)
    assert re.search(r"threshold\s*=\s*var\.alarm_latency_p99_seconds", latency)
    # The alarm topic is encrypted with the key, and CloudWatch may use that key: without
    # it the alarms change state but their notifications are dropped.
    topic = text.split('resource "aws_sns_topic" "alarms" {', 1)[1].split("\n}", 1)[0]
    assert "kms_master_key_id = aws_kms_key.main.arn" in topic
    assert '"cloudwatch.amazonaws.com"' in (TERRAFORM / "kms.tf").read_text()


# ----------------------------------------------------------------------------- healthcheck


def test_image_healthcheck_reports_a_serving_service(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SENTILOOP_")},
        "SENTILOOP_DATA_DIR": str(tmp_path),
        "SENTILOOP_HOST": "127.0.0.1",
        "SENTILOOP_FEEDBACK_PORT": str(port),
    }
    check = [sys.executable, str(DEPLOY / "healthcheck.py"), "feedback"]
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 1
    service = subprocess.Popen(
        [sys.executable, "-m", "sentiloop.serve", "feedback"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(check, env=env, capture_output=True, timeout=30).returncode != 0:
            assert service.poll() is None, "the service exited"
            assert time.monotonic() < deadline, "never healthy"
            time.sleep(0.2)
    finally:
        service.terminate()
        service.wait(timeout=30)
    unknown = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), "nope"], capture_output=True, text=True
    )
    assert unknown.returncode == 1 and "unknown target" in unknown.stderr


# ----------------------------------------------------------------------------- workflow


def test_workflow_jobs_and_oidc() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs: dict[str, Any] = workflow["jobs"]
    assert {"lint", "tests", "images", "terraform-plan", "deploy", "health"} <= set(jobs)
    assert any("make test" in step.get("run", "") for step in jobs["tests"]["steps"])
    for name, job in jobs.items():
        uses_aws = [
            s for s in job.get("steps", []) if "configure-aws-credentials" in s.get("uses", "")
        ]
        for step in uses_aws:
            assert job["permissions"]["id-token"] == "write", name
            assert step["with"]["role-to-assume"].startswith("${{ secrets."), name
    assert workflow["permissions"] == {"contents": "read"}
    assert "/health" in jobs["health"]["steps"][0]["run"]
