"""Served Predict throughput with dynamic batching, against the raw engine, on real review
sentences, in one run.

    .venv/bin/python benchmarks/serving.py [--preset minilm] [--texts 384] [--rounds 3]

1. Bootstraps a model (MiniLM by default) into a temporary data directory.
2. Raw in-process, the same inference.py on the same artifact, in this process while no
   mesh runs: predict_texts one text per call (batch 1, the naive baseline), 8 and 32.
3. Served: gRPC straight to InferenceService at concurrency 1, 16 and 64, with
   SENTILOOP_INFERENCE_MAX_BATCH=1 (every request runs alone: the server before batching)
   and with batches of up to 4, 8, 16 and 32 texts. The mesh restarts on the same data
   directory for each setting; the load generator runs on the same machine.

Conditions are interleaved round by round and medians reported; every served figure is
also given as a ratio to the best raw engine of the same run.

    .venv/bin/python benchmarks/serving.py --replicas

compares instead one InferenceService (torch on every core) with two replicas (half the
cores each), both through Envoy at concurrency 16 and 64, with the default batch size.

    .venv/bin/python benchmarks/serving.py --paths

measures, with the default settings, each way in: gRPC straight to InferenceService, gRPC
through Envoy and JSON through Envoy, at concurrency 1, 16 and 64, and the inference
process's resident memory with the model loaded; each figure as a ratio to the best raw
engine of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
from latency import percentile

from sentiloop.core.artifacts import unpack_artifact
from sentiloop.core.objectstore import LocalObjectStore
from sentiloop.core.scripts import load_script
from sentiloop.data import vader
from sentiloop.testing import start_mesh, wait_for
from sentiloop.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    model_init_pb2,
    model_init_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

RAW_BATCHES = (1, 8, 32)
MAX_BATCHES = (1, 4, 8, 16, 32)
Figures = tuple[float, float, float]  # sentences/s, p50 ms, p99 ms
CONCURRENCY = (1, 16, 64)


def sentences(count: int) -> list[str]:
    """The first ``count`` Amazon review sentences of the test split."""
    return [e.text for e in vader.split_examples(vader.load_domain("amazon"))["test"]][:count]


def bootstrap(data_dir: Path, preset: str) -> str:
    """Trains and deploys a model; returns its artifact."""
    mesh = start_mesh(data_dir)
    try:
        with grpc.insecure_channel(mesh.envoy_address) as channel:
            model_init = model_init_pb2_grpc.ModelInitServiceStub(channel)
            job = model_init.Bootstrap(
                model_init_pb2.BootstrapRequest(auto_deploy=True, preset=preset)
            )
            request = model_init_pb2.WatchTrainingJobRequest(job_name=job.job_name)
            last = list(model_init.WatchTrainingJob(request))[-1]
            assert last.job.status == "Completed", last
            registry = registry_pb2_grpc.ModelRegistryServiceStub(channel)
            wait_for(lambda: registry.ListModels(registry_pb2.ListModelsRequest()).count > 0, 120)
            active = registry.GetModel(registry_pb2.GetModelRequest(version="active"))
            return str(active.model.path)
    finally:
        mesh.stop()


def raw(data_dir: Path, artifact: str, texts: list[str], batch: int) -> float:
    """Sentences per second of predict_texts in this process, ``batch`` texts per call."""
    inference = load_script("inference")
    folder = unpack_artifact(LocalObjectStore(data_dir / "objects"), artifact, data_dir / "raw")
    model = inference.model_fn(str(folder))
    inference.predict_texts(model, texts[:batch])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        inference.predict_texts(model, texts[start : start + batch])
    return len(texts) / (time.perf_counter() - started)


def served(
    data_dir: Path,
    max_batch: int,
    texts: list[str],
    replicas: int = 1,
    concurrency_levels: tuple[int, ...] = CONCURRENCY,
) -> dict[int, Figures]:
    """Per concurrency: sentences/s, p50 and p99 latency (ms) of Predict, gRPC straight to
    InferenceService (through Envoy with replicas, which only Envoy balances over)."""
    env = {"SENTILOOP_INFERENCE_MAX_BATCH": str(max_batch)}
    if replicas > 1:
        env |= {
            "SENTILOOP_INFERENCE_REPLICAS": str(replicas),
            # Replica k listens 1000 above the first: keep them below the ephemeral ports.
            "SENTILOOP_INFERENCE_PORT": "21000",
        }
    mesh = start_mesh(data_dir, extra_env=env)
    results: dict[int, Figures] = {}
    address = mesh.envoy_address if replicas > 1 else mesh.address("inference")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for text in texts[:8]:  # warm-up
                stub.Predict(inference_pb2.PredictRequest(text=text), timeout=60)
            for concurrency in concurrency_levels:
                results[concurrency] = measure(
                    lambda text: stub.Predict(inference_pb2.PredictRequest(text=text), timeout=120),
                    texts,
                    concurrency,
                )
    finally:
        mesh.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="minilm")
    parser.add_argument("--texts", type=int, default=384, help="sentences per condition")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", action="store_true", help="1 vs 2 replicas via Envoy")
    parser.add_argument("--paths", action="store_true", help="direct, Envoy gRPC, Envoy JSON")
    args = parser.parse_args()
    if args.replicas:
        compare_replicas(args)
        return
    if args.paths:
        compare_paths(args)
        return

    texts = sentences(args.texts)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, preset {args.preset},"
        f" {len(texts)} Amazon review test sentences per condition, {args.rounds} rounds"
    )
    raw_rates: dict[int, list[float]] = defaultdict(list)
    served_rates: dict[tuple[int, int], list[Figures]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        started = time.monotonic()
        artifact = bootstrap(data_dir, args.preset)
        print(f"# bootstrapped in {time.monotonic() - started:.0f} s: {artifact}")
        for round_number in range(args.rounds):
            for batch in RAW_BATCHES:
                raw_rates[batch].append(raw(data_dir, artifact, texts, batch))
            for max_batch in MAX_BATCHES:
                for concurrency, figures in served(data_dir, max_batch, texts).items():
                    served_rates[(max_batch, concurrency)].append(figures)
            print(f"# round {round_number + 1} done", flush=True)

    raw_median = {batch: statistics.median(rates) for batch, rates in raw_rates.items()}
    best_raw = max(raw_median.values())
    print("\nraw engine, in-process (sentences/s, median of rounds)")
    for batch, rate in raw_median.items():
        print(f"  torch fp32 batch {batch:<3} {rate:8.1f}   / best raw {rate / best_raw:5.2f}")
    print("\nserved, gRPC direct to InferenceService (median of rounds)")
    print(
        f"  {'max batch':>9} {'clients':>7} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'/ best raw':>10} {'/ raw b1':>9}"
    )
    for (max_batch, concurrency), figures in served_rates.items():
        rate = statistics.median(f[0] for f in figures)
        p50 = statistics.median(f[1] for f in figures)
        p99 = statistics.median(f[2] for f in figures)
        print(
            f"  {max_batch:>9} {concurrency:>7} {rate:8.1f} {p50:8.1f} {p99:8.1f}"
            f" {rate / best_raw:10.2f} {rate / raw_median[1]:9.2f}"
        )


def measure(call: Callable[[str], None], texts: list[str], concurrency: int) -> Figures:
    latencies: list[float] = []

    def timed(text: str) -> None:
        started = time.perf_counter()
        call(text)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, texts))
    elapsed = time.perf_counter() - started
    return (
        len(texts) / elapsed,
        statistics.median(latencies) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def by_path(data_dir: Path, texts: list[str]) -> tuple[dict[tuple[str, int], Figures], float]:
    mesh = start_mesh(data_dir)
    results: dict[tuple[str, int], Figures] = {}
    try:
        direct = grpc.insecure_channel(mesh.address("inference"))
        edge = grpc.insecure_channel(mesh.envoy_address)
        http = httpx.Client(
            base_url=mesh.url, timeout=120, limits=httpx.Limits(max_connections=128)
        )
        stubs = {
            "gRPC direct": inference_pb2_grpc.InferenceServiceStub(direct),
            "gRPC via Envoy": inference_pb2_grpc.InferenceServiceStub(edge),
        }
        calls: dict[str, Callable[[str], None]] = {
            name: (
                lambda text, s=stub: s.Predict(inference_pb2.PredictRequest(text=text), timeout=120)
            )
            for name, stub in stubs.items()
        }
        calls["JSON via Envoy"] = lambda text: http.post(
            "/predict", json={"text": text}
        ).raise_for_status()
        for call in calls.values():
            for text in texts[:8]:  # warm-up
                call(text)
        for concurrency in CONCURRENCY:
            for name, call in calls.items():
                results[(name, concurrency)] = measure(call, texts, concurrency)
        rss = rss_mib(mesh.pid("inference"))
        http.close()
        direct.close()
        edge.close()
    finally:
        mesh.stop()
    return results, rss


def compare_paths(args: argparse.Namespace) -> None:
    texts = sentences(args.texts)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, preset {args.preset}, default"
        f" settings, {len(texts)} sentences per condition, {args.rounds} rounds"
    )
    raw_rates: dict[int, list[float]] = defaultdict(list)
    figures: dict[tuple[str, int], list[Figures]] = defaultdict(list)
    rss: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        artifact = bootstrap(data_dir, args.preset)
        for round_number in range(args.rounds):
            for batch in RAW_BATCHES:
                raw_rates[batch].append(raw(data_dir, artifact, texts, batch))
            results, resident = by_path(data_dir, texts)
            rss.append(resident)
            for key, value in results.items():
                figures[key].append(value)
            print(f"# round {round_number + 1} done", flush=True)
    raw_median = {batch: statistics.median(rates) for batch, rates in raw_rates.items()}
    best_raw = max(raw_median.values())
    for batch, rate in raw_median.items():
        print(f"  raw torch fp32 batch {batch:<3} {rate:8.1f} sentences/s")
    print(f"  inference process RSS with the model loaded: {statistics.median(rss):.0f} MiB")
    print(
        f"  {'path':<16} {'clients':>7} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'/ best raw':>10}"
    )
    for (name, concurrency), values in figures.items():
        rate = statistics.median(v[0] for v in values)
        print(
            f"  {name:<16} {concurrency:>7} {rate:8.1f}"
            f" {statistics.median(v[1] for v in values):8.1f}"
            f" {statistics.median(v[2] for v in values):8.1f} {rate / best_raw:10.2f}"
        )


def compare_replicas(args: argparse.Namespace) -> None:
    texts = sentences(args.texts)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, preset {args.preset},"
        f" {len(texts)} sentences per condition, {args.rounds} rounds, through Envoy"
    )
    rates: dict[tuple[int, int], list[Figures]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        bootstrap(data_dir, args.preset)
        for round_number in range(args.rounds):
            for replicas in (1, 2):
                for concurrency, figures in served(
                    data_dir, 8, texts, replicas, concurrency_levels=(16, 64)
                ).items():
                    rates[(replicas, concurrency)].append(figures)
            print(f"# round {round_number + 1} done", flush=True)
    base = {c: statistics.median(f[0] for f in rates[(1, c)]) for c in (16, 64)}
    print(f"  {'replicas':>8} {'clients':>7} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'/ 1':>6}")
    for (replicas, concurrency), figures in rates.items():
        rate = statistics.median(f[0] for f in figures)
        print(
            f"  {replicas:>8} {concurrency:>7} {rate:8.1f}"
            f" {statistics.median(f[1] for f in figures):8.1f}"
            f" {statistics.median(f[2] for f in figures):8.1f} {rate / base[concurrency]:6.2f}"
        )


if __name__ == "__main__":
    main()
