"""The metadata database under load: SQLite against PostgreSQL (issue 16's report).

    .venv/bin/python benchmarks/metadata_db.py [--records 1500] [--clients 16] [--rounds 3]

1. Feedback ingest: SubmitFeedback over gRPC through Envoy, ``--clients`` closed-loop
   clients each sending Amazon review sentences with their own idempotency keys, against
   three meshes started side by side: SQLite (the default), PostgreSQL with one
   FeedbackService, PostgreSQL with two. Records per second and the p50/p99 latency of an
   acknowledgement; fsync is on everywhere (SQLite ``synchronous=FULL``, PostgreSQL's
   defaults), so each acknowledged record is on disk.
2. The prediction log: what writing one answer's row costs InferenceService, per engine,
   by batch size (the batcher logs a batch in one transaction): ``PredictionLog.record``
   timed in this process on the same sentences, with the log's own durability (no flush
   per commit: SQLite ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``).

The PostgreSQL server is the tests' own (tests/postgres.py: Debian's package, a fresh
cluster on loopback, fsync on) unless ``--database-url`` names one. Conditions are
interleaved round by round, alternating which goes first; medians are reported, with
ratios to SQLite of the same run. Load generator, mesh and database share this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from latency import percentile

from sentiloop.data import vader
from sentiloop.testing import RunningMesh, replica_base_port, start_mesh
from sentiloop.v1 import feedback_pb2, feedback_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

Figures = tuple[float, float, float]  # records/s, p50 ms, p99 ms
LABELS = ("negative", "neutral", "positive")


def sentences() -> list[str]:
    return [e.text for e in vader.split_examples(vader.load_domain("amazon"))["test"]]


@contextmanager
def database_server(url: str | None) -> Iterator[tuple[str, ...]]:
    """Three fresh databases (one per PostgreSQL condition and one for the log's)."""
    if url:
        yield (url, url, url)
        return
    from postgres import running_postgres

    with running_postgres() as server:
        yield tuple(server.create_database() for _ in range(3))


def ingest(mesh: RunningMesh, texts: list[str], records: int, clients: int) -> Figures:
    latencies: list[float] = []
    lock = threading.Lock()
    run = uuid.uuid4().hex[:8]
    with mesh.operator_channel() as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)

        def send(i: int) -> None:
            request = feedback_pb2.SubmitFeedbackRequest(
                text=texts[i % len(texts)],
                user_label=LABELS[i % 3],
                idempotency_key=f"{run}-{i}",
            )
            started = time.perf_counter()
            stub.SubmitFeedback(request, timeout=30)
            with lock:
                latencies.append(time.perf_counter() - started)

        stub.SubmitFeedback(  # the channel's connection, outside the timing
            feedback_pb2.SubmitFeedbackRequest(text="warm-up", user_label="neutral"), timeout=30
        )
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, range(records)))
        elapsed = time.perf_counter() - started
    return (
        records / elapsed,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


def log_cost(url: str | None, texts: list[str], batch: int, batches: int) -> float:
    """Microseconds per logged prediction: ``batches`` batches of ``batch`` rows."""
    from sentiloop.core.db import open_database
    from sentiloop.inference.engine import Prediction, PredictionLog

    def prediction(i: int) -> Prediction:
        scores = {"negative": 0.1, "neutral": 0.2, "positive": 0.7}
        text = texts[i % len(texts)]
        return Prediction(uuid.uuid4().hex, text, "positive", 0.7, scores, "v1")

    with tempfile.TemporaryDirectory() as folder:
        log = PredictionLog(
            open_database(url, Path(folder) / "predictions.db", schema="inference", durable=False)
        )
        try:
            rows = [[prediction(b * batch + i) for i in range(batch)] for b in range(batches + 1)]
            log.record(rows[0])  # the connection and the statement, outside the timing
            started = time.perf_counter()
            for chunk in rows[1:]:
                log.record(chunk)
            elapsed = time.perf_counter() - started
        finally:
            log.close()
    return elapsed / (batch * batches) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1500, help="per condition and round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="a PostgreSQL server to use instead")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python"
        f" {platform.python_version()}; {args.clients} clients, {args.records} records per"
        f" condition and round, {args.rounds} rounds",
        flush=True,
    )
    texts = sentences()
    with ExitStack() as stack:
        pg_one, pg_two, pg_log = stack.enter_context(database_server(args.database_url))
        conditions = {
            "SQLite, 1 feedback process": {},
            "PostgreSQL, 1 feedback process": {"SENTILOOP_DATABASE_URL": pg_one},
            "PostgreSQL, 2 feedback processes": {
                "SENTILOOP_DATABASE_URL": pg_two,
                "SENTILOOP_FEEDBACK_REPLICAS": "2",
                "SENTILOOP_FEEDBACK_PORT": str(replica_base_port()),
            },
        }
        meshes: dict[str, RunningMesh] = {}
        for name, env in conditions.items():
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            meshes[name] = start_mesh(folder, extra_env=env)
            stack.callback(meshes[name].stop)
        results: dict[str, list[Figures]] = {name: [] for name in conditions}
        names = list(conditions)
        for round_number in range(args.rounds):
            order = names if round_number % 2 == 0 else names[::-1]
            for name in order:
                figures = ingest(meshes[name], texts, args.records, args.clients)
                results[name].append(figures)
                print(
                    f"round {round_number + 1} {name}: {figures[0]:.0f} records/s,"
                    f" p50 {figures[1]:.1f} ms, p99 {figures[2]:.1f} ms",
                    flush=True,
                )
        base = statistics.median(f[0] for f in results[names[0]])
        print("\nFeedback ingest (medians)")
        print("| condition | records/s | vs SQLite | p50 ms | p99 ms |")
        print("|---|---|---|---|---|")
        for name in names:
            rate = statistics.median(f[0] for f in results[name])
            p50 = statistics.median(f[1] for f in results[name])
            p99 = statistics.median(f[2] for f in results[name])
            print(f"| {name} | {rate:.0f} | {rate / base:.2f} | {p50:.1f} | {p99:.1f} |")

        costs: dict[tuple[str, int], list[float]] = {}
        engines = {"SQLite": None, "PostgreSQL": pg_log}
        for round_number in range(args.rounds):
            order = list(engines) if round_number % 2 == 0 else list(engines)[::-1]
            for batch in (1, 8, 32):
                for engine in order:
                    cost = log_cost(engines[engine], texts, batch, max(20, 400 // batch))
                    costs.setdefault((engine, batch), []).append(cost)
        print("\nPrediction log: microseconds per logged prediction (medians)")
        print("| batch | SQLite | PostgreSQL | PostgreSQL / SQLite |")
        print("|---|---|---|---|")
        for batch in (1, 8, 32):
            lite = statistics.median(costs[("SQLite", batch)])
            pg = statistics.median(costs[("PostgreSQL", batch)])
            print(f"| {batch} | {lite:.0f} | {pg:.0f} | {pg / lite:.2f} |")


if __name__ == "__main__":
    main()
