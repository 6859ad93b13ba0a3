"""The `sentiloop` command."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from sentiloop.core.config import load_settings


def _cmd_up(args: argparse.Namespace) -> int:
    from sentiloop.core.supervisor import run_mesh

    return run_mesh(load_settings(), startup_timeout=args.timeout)


def _cmd_health(args: argparse.Namespace) -> int:
    settings = load_settings()
    url = args.url or f"http://127.0.0.1:{settings.envoy_port}"
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            body = json.loads(response.read())
            code = response.status
    except urllib.error.HTTPError as error:
        body, code = json.loads(error.read() or b"{}"), error.code
    except OSError as error:
        print(f"cannot reach {url}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2))
    return 0 if code == 200 else 1


def _cmd_envoy_config(args: argparse.Namespace) -> int:
    from sentiloop.core.envoy_config import render_yaml

    sys.stdout.write(render_yaml(load_settings()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentiloop",
        description="Sentiloop: sentiment analysis that improves itself from feedback.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start every service and Envoy; Ctrl-C stops them")
    up.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the mesh to become healthy",
    )
    up.set_defaults(func=_cmd_up)

    health = commands.add_parser("health", help="show the health of every service")
    health.add_argument(
        "--url", help="Envoy's URL (default http://127.0.0.1:$SENTILOOP_ENVOY_PORT)"
    )
    health.set_defaults(func=_cmd_health)

    envoy_config = commands.add_parser("envoy-config", help="print the Envoy configuration")
    envoy_config.set_defaults(func=_cmd_envoy_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
