"""What the error shape costs a JSON request: the same mesh behind two Envoys, one with
the configuration `sentiloop up` renders (the Lua filter that reshapes errors and checks
body sizes, local_reply_config for Envoy's own errors) and one without either (the
baseline), called in interleaved rounds with review sentences.

    .venv/bin/python benchmarks/error_shape.py [--calls 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from latency import percentile

from sentiloop.testing import REVIEWS, free_port, start_mesh, wait_for

LUA = "envoy.filters.http.lua"


def baseline_config(rendered: Path, port: int, admin_port: int) -> dict[str, object]:
    """The rendered configuration without the error shaping, on other ports."""
    config = yaml.safe_load(rendered.read_text())
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager.pop("local_reply_config")
    manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != LUA]
    listener["address"]["socket_address"]["port_value"] = port
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    return config  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="calls per request kind")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_mesh(Path(tmp) / "mesh")
        port = free_port()
        config_path = Path(tmp) / "baseline.yaml"
        config_path.write_text(
            yaml.safe_dump(baseline_config(mesh.data_dir / "run" / "envoy.yaml", port, free_port()))
        )
        envoy = subprocess.Popen(
            [str(Path(sys.executable).parent / "envoy"),
             "-c", str(config_path), "--log-level", "error"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            shaped = httpx.Client(base_url=mesh.url)
            plain = httpx.Client(base_url=f"http://127.0.0.1:{port}")

            def baseline_up() -> bool:
                try:
                    return plain.get("/feedback/stats").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(baseline_up, timeout=30)
            sentences = [text for text, _ in REVIEWS]
            counter = iter(range(10**9))

            def request(client: httpx.Client, kind: str) -> int:
                text = sentences[next(counter) % len(sentences)]
                if kind == "service error":  # a 400 from FeedbackService, reshaped by Lua
                    body = json.dumps({"text": text, "user_label": "great"})
                elif kind == "envoy error":  # malformed JSON: Envoy's own 400
                    body = json.dumps({"text": text})[:-2]
                else:  # stored, 200: the Lua filter only looks at headers
                    body = json.dumps({"text": text, "user_label": "positive"})
                return client.post("/feedback", content=body).status_code

            kinds = {"success": 200, "service error": 400, "envoy error": 400}
            clients = {"baseline": plain, "shaped": shaped}
            samples: dict[tuple[str, str], list[float]] = {
                (k, c): [] for k in kinds for c in clients
            }
            for kind, status in kinds.items():  # warm-up, and the shapes are what we think
                for name, client in clients.items():
                    for _ in range(50):
                        assert request(client, kind) == status, (kind, name)
            per_round = max(1, args.calls // args.rounds)
            for round_number in range(args.rounds):
                order = list(clients.items())
                if round_number % 2:
                    order.reverse()
                for _ in range(per_round):
                    for kind in kinds:
                        for name, client in order:
                            started = time.perf_counter()
                            request(client, kind)
                            samples[(kind, name)].append((time.perf_counter() - started) * 1e3)
        finally:
            envoy.terminate()
            envoy.wait()
            mesh.stop()

    print(
        f"Error shape cost, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
        f" {per_round * args.rounds} calls per kind and config in {args.rounds} interleaved rounds,"
        " POST /feedback with review sentences, one HTTP/1.1 keep-alive client (ms)"
    )
    print(
        f"  {'request':<14} {'config':<9} {'median':>8} {'p99':>8} {'added median':>13} {'added p99':>10}"
    )
    for kind in kinds:
        base = samples[(kind, "baseline")]
        for name in clients:
            values = samples[(kind, name)]
            added = statistics.median(values) - statistics.median(base)
            added_p99 = percentile(values, 0.99) - percentile(base, 0.99)
            print(
                f"  {kind:<14} {name:<9} {statistics.median(values):8.3f}"
                f" {percentile(values, 0.99):8.3f} {added:13.3f} {added_p99:10.3f}"
            )


if __name__ == "__main__":
    main()
