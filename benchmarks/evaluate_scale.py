"""How POST /evaluate scales with the number of feedback records.

    .venv/bin/python benchmarks/evaluate_scale.py [--sizes 1000 10000 100000] [--repeats 3]

Starts the mesh (tiny preset: this measures the evaluation machinery, not the model's
speed; a MiniLM model predicts each new text about 50x slower), bootstraps a model, and
grows the feedback store to each size with real sentences (the VADER ground truth, every
domain, each record a distinct text). At each size it times, through Envoy:

* cold: the first Evaluate after the store grew: it reads the new records and predicts
  every text it has not scored yet (what every call did before evaluation was incremental:
  the baseline);
* warm: Evaluate again with nothing new;
* +100: Evaluate after 100 more labels arrived through the API;

warm and +100 are interleaved, --repeats times each, and their medians reported.

The records are written straight into the feedback service's SQLite store before each
step (100,000 API calls would take most of the run); the 100 of "+100" go through the API.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from sentiloop.data import vader
from sentiloop.feedback.store import FeedbackStore
from sentiloop.testing import TINY_ENV, start_mesh, wait_for


def sentences() -> list[tuple[str, str]]:
    rows = []
    for domain in vader.DOMAINS:
        rows += [(text, label.lower()) for _group, text, label in vader.load_domain(domain)]
    return rows


def seed(db: Path, start: int, stop: int, pool: list[tuple[str, str]]) -> None:
    """Records start..stop-1, as the feedback service stores them, in one transaction."""
    now = datetime.now(UTC).isoformat()
    rows = [
        (f"{pool[i % len(pool)][0]} (#{i})", "", pool[i % len(pool)][1], "", "", None, now)
        for i in range(start, stop)
    ]
    with sqlite3.connect(db, timeout=30) as connection:
        connection.executemany(
            "INSERT INTO feedback (text, model_prediction, user_label, prediction_id,"
            " model_version, idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def timed(client: httpx.Client) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    response = client.post("/evaluate", json={})
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return seconds, response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pool = sentences()
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python"
        f" {platform.python_version()}; {len(pool)} distinct VADER sentences cycled",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        db = data / "feedback" / "feedback.db"
        FeedbackStore(db, 5000).close()  # the service's own schema
        mesh = start_mesh(data, extra_env=TINY_ENV)
        try:
            with httpx.Client(
                base_url=mesh.url, headers=mesh.operator_headers, timeout=3600
            ) as client:
                client.post("/model-init/bootstrap?auto_deploy=true", json={})
                wait_for(
                    lambda: client.get("/predict/status").json().get("status") == "InService", 180
                )
                seeded = 0
                print(f"{'records':>8} {'cold s':>8} {'warm s':>8} {'+100 s':>8} cold/warm")
                for size in args.sizes:
                    seed(db, seeded, size, pool)
                    seeded = size
                    cold, report = timed(client)
                    assert int(report["total_samples"]) >= size, report  # type: ignore[call-overload]
                    warm, extra = [], []
                    for r in range(args.repeats):
                        warm.append(timed(client)[0])
                        for i in range(100):
                            text, label = pool[(size + r * 100 + i) % len(pool)]
                            client.post(
                                "/feedback",
                                json={"text": f"{text} (new {size}-{r}-{i})", "user_label": label},
                            ).raise_for_status()
                        extra.append(timed(client)[0])
                    w, e = statistics.median(warm), statistics.median(extra)
                    print(
                        f"{size:>8} {cold:>8.2f} {w:>8.3f} {e:>8.3f} {cold / w:8.1f}x", flush=True
                    )
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
