"""Served Predict throughput and latency against the raw engines, on real review sentences,
in one run (issue 12's report).

    .venv/bin/python benchmarks/serving.py [--preset minilm] [--texts 384] [--rounds 3]

1. Bootstraps a model (MiniLM by default) into a temporary data directory: train.py exports
   it to ONNX and decides whether its int8 graph may serve.
2. Raw in-process, the same inference.py on the same artifact, in this process while no
   mesh runs: torch fp32 one text per call (batch 1, the naive baseline) and at 8, and the
   served ONNX graph (fp32, or int8 when it passed) at batch 1, 8 and 32.
3. Served with the default settings, each way in: gRPC straight to InferenceService, gRPC
   through Envoy and JSON through Envoy, closed-loop at concurrency 1, 16 and 64, then
   open-loop (Poisson arrivals) at half of that path's saturation throughput; and the
   inference process's resident memory with the model loaded.

Conditions are interleaved round by round and medians reported; every served figure is also
given as a ratio to the best raw engine and to torch fp32 at batch 1 of the same run. The
load generator runs on the same machine as the mesh.

    .venv/bin/python benchmarks/serving.py --batch-sizes

compares instead SENTILOOP_INFERENCE_MAX_BATCH=1 (every request alone: the server before
batching) with batches of up to 4, 8, 16 and 32 texts, gRPC direct at concurrency 1, 16 and
64 and open-loop at ``--rate`` requests/s (how the default batch size was chosen), and

    .venv/bin/python benchmarks/serving.py --replicas

one InferenceService (the engine on every core) with two replicas (half the cores each),
both through Envoy at concurrency 16 and 64 and open-loop at ``--rate`` requests/s, with the
default batch size, and

    .venv/bin/python benchmarks/serving.py --metrics-cost

what the Prometheus metrics cost: SENTILOOP_METRICS_ENABLED=false (the baseline) against
the default (on, and GET /metrics scraped every second meanwhile), gRPC direct to
InferenceService, where nothing else hides the cost, at concurrency 1, 16 and 64, the two
alternating first from round to round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
HALF = 0  # stands for "open loop at half of the path's saturation" among the concurrencies


def sentences(count: int) -> list[str]:
    """The first ``count`` Amazon review sentences of the test split."""
    return [e.text for e in vader.split_examples(vader.load_domain("amazon"))["test"]][:count]


def bootstrap(data_dir: Path, preset: str) -> str:
    """Trains and deploys a model; returns its artifact."""
    mesh = start_mesh(data_dir)
    try:
        with mesh.operator_channel() as channel:
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


def raw(data_dir: Path, artifact: str, texts: list[str], batch: int, engine: str) -> float:
    """Sentences per second of predict_texts in this process, ``batch`` texts per call."""
    inference = load_script("inference")
    folder = unpack_artifact(LocalObjectStore(data_dir / "objects"), artifact, data_dir / "raw")
    model = inference.load_model(folder, engine=engine)
    inference.predict_texts(model, texts[:batch])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        inference.predict_texts(model, texts[start : start + batch])
    return len(texts) / (time.perf_counter() - started)


def test_set_quality(data_dir: Path, artifact: str) -> dict[str, float]:
    """Macro-F1 on the whole Amazon test split of torch fp32 and of the served engine."""
    inference, train = load_script("inference"), load_script("train")
    folder = unpack_artifact(LocalObjectStore(data_dir / "objects"), artifact, data_dir / "raw")
    examples = vader.split_examples(vader.load_domain("amazon"))["test"]
    truth = [train.LABELS.index(e.label.lower()) for e in examples]
    scores = {}
    for engine in ("torch", "auto"):
        model = inference.load_model(folder, engine=engine)
        predicted = inference.predict_texts(model, [e.text for e in examples])
        guesses = [train.LABELS.index(p["label"]) for p in predicted]
        name = "torch fp32" if engine == "torch" else f"{model.engine} {model.precision}"
        scores[name] = train.compute_metrics(truth, guesses, train.LABELS)["macro_f1"]
    return scores


def served_graph(data_dir: Path, artifact: str) -> dict[str, Any]:
    """What labels.json says of the artifact's ONNX graph (precision, the int8 verdict)."""
    folder = unpack_artifact(LocalObjectStore(data_dir / "objects"), artifact, data_dir / "raw")
    return dict(json.loads((folder / "labels.json").read_text()).get("onnx") or {})


def served(
    data_dir: Path,
    max_batch: int,
    texts: list[str],
    replicas: int = 1,
    concurrency_levels: tuple[int, ...] = CONCURRENCY,
    open_rate: float | None = None,
    extra_env: dict[str, str] | None = None,
    scrape_every: float | None = None,
) -> dict[int, Figures]:
    """Per concurrency: sentences/s, p50 and p99 latency (ms) of Predict, gRPC straight to
    InferenceService (through Envoy with replicas, which only Envoy balances over); with
    ``open_rate``, also open-loop at that many requests per second (key HALF)."""
    env = {"SENTILOOP_INFERENCE_MAX_BATCH": str(max_batch), **(extra_env or {})}
    if replicas > 1:
        env |= {
            "SENTILOOP_INFERENCE_REPLICAS": str(replicas),
            # Replica k listens 1000 above the first: keep them below the ephemeral ports.
            "SENTILOOP_INFERENCE_PORT": "21000",
        }
    mesh = start_mesh(data_dir, extra_env=env)
    results: dict[int, Figures] = {}
    address = mesh.envoy_address if replicas > 1 else mesh.address("inference")
    scraping = threading.Event()
    if scrape_every:
        # A Prometheus scraping GET /metrics throughout, as a deployment is.
        def scrape() -> None:
            with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers) as client:
                while not scraping.wait(scrape_every):
                    client.get("/metrics", timeout=10).raise_for_status()

        threading.Thread(target=scrape, daemon=True).start()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for text in texts[:8]:  # warm-up
                stub.Predict(inference_pb2.PredictRequest(text=text), timeout=60)

            def call(text: str) -> None:
                stub.Predict(inference_pb2.PredictRequest(text=text), timeout=120)

            for concurrency in concurrency_levels:
                results[concurrency] = measure(call, texts, concurrency)
            if open_rate:
                results[HALF] = measure_open_loop(call, texts, open_rate)
    finally:
        scraping.set()
        mesh.stop()
    return results


RAW_CONDITIONS = (("torch", 1), ("torch", 8), ("auto", 1), ("auto", 8), ("auto", 32))


def raw_engines(data_dir: Path, artifact: str, texts: list[str]) -> dict[tuple[str, int], float]:
    return {
        (engine, batch): raw(data_dir, artifact, texts, batch, engine)
        for engine, batch in RAW_CONDITIONS
    }


def print_raw(rates: dict[tuple[str, int], list[float]], graph: dict[str, Any]) -> dict[str, float]:
    """Prints the raw engines' medians; returns the best raw and torch fp32 batch 1."""
    median = {key: statistics.median(values) for key, values in rates.items()}
    best = max(median.values())
    served_as = f"onnxruntime {graph.get('precision', '?')}" if graph else "torch fp32 (no ONNX)"
    print("\nraw engine, in-process (sentences/s, median of rounds)")
    for (engine, batch), rate in median.items():
        name = "torch fp32" if engine == "torch" else served_as
        print(f"  {name:<18} batch {batch:<3} {rate:8.1f}   / best raw {rate / best:5.2f}")
    verdict = graph.get("int8") or {}
    if verdict:
        print(
            f"  int8 {'serves' if verdict['accepted'] else 'rejected'}: {verdict['reason']}"
            f" (argmax agreement {verdict['argmax_agreement']:.4f}, macro-F1"
            f" {verdict['macro_f1_int8']:.4f} vs fp32 {verdict['macro_f1_fp32']:.4f},"
            f" {verdict['batch_label_flips']} labels flip with the batch)"
        )
    return {"best": best, "torch_b1": median[("torch", 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="minilm")
    parser.add_argument("--texts", type=int, default=384, help="sentences per condition")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", action="store_true", help="1 vs 2 replicas via Envoy")
    parser.add_argument("--batch-sizes", action="store_true", help="max batch 1 to 32, direct")
    parser.add_argument("--metrics-cost", action="store_true", help="metrics off vs on, direct")
    parser.add_argument(
        "--rate", type=float, default=200, help="--batch-sizes, --replicas: open-loop requests/s"
    )
    args = parser.parse_args()
    if args.replicas:
        compare_replicas(args)
    elif args.batch_sizes:
        compare_batch_sizes(args)
    elif args.metrics_cost:
        compare_metrics_cost(args)
    else:
        report(args)


def compare_batch_sizes(args: argparse.Namespace) -> None:
    texts = sentences(args.texts)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, preset {args.preset},"
        f" {len(texts)} Amazon review test sentences per condition, {args.rounds} rounds"
    )
    raw_rates: dict[tuple[str, int], list[float]] = defaultdict(list)
    served_rates: dict[tuple[int, int], list[Figures]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        started = time.monotonic()
        artifact = bootstrap(data_dir, args.preset)
        print(f"# bootstrapped in {time.monotonic() - started:.0f} s: {artifact}")
        for round_number in range(args.rounds):
            for key, rate in raw_engines(data_dir, artifact, texts).items():
                raw_rates[key].append(rate)
            for max_batch in MAX_BATCHES:
                for concurrency, figures in served(
                    data_dir, max_batch, texts, open_rate=args.rate
                ).items():
                    served_rates[(max_batch, concurrency)].append(figures)
            print(f"# round {round_number + 1} done", flush=True)
        baseline = print_raw(raw_rates, served_graph(data_dir, artifact))
    print("\nserved, gRPC direct to InferenceService (median of rounds)")
    print(
        f"  {'max batch':>9} {'clients':>7} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'/ best raw':>10} {'/ torch b1':>10}"
    )
    for (max_batch, concurrency), figures in served_rates.items():
        rate, p50, p99 = medians(figures)
        load = f"{args.rate:.0f}/s" if concurrency == HALF else str(concurrency)
        print(
            f"  {max_batch:>9} {load:>7} {rate:8.1f} {p50:8.1f} {p99:8.1f}"
            f" {rate / baseline['best']:10.2f} {rate / baseline['torch_b1']:10.2f}"
        )


def medians(rounds: list[Figures]) -> Figures:
    """Each figure's median over the rounds."""
    rate, p50, p99 = (statistics.median(figures[i] for figures in rounds) for i in range(3))
    return rate, p50, p99


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


def measure_open_loop(call: Callable[[str], None], texts: list[str], rate: float) -> Figures:
    """Requests arriving as a Poisson process of ``rate`` per second, whether or not earlier
    ones were answered (as independent users send them); latency from each request's send."""
    arrivals = random.Random(13)
    latencies: list[float] = []

    def timed(text: str) -> None:
        sent = time.perf_counter()
        call(text)
        latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    due = started
    with ThreadPoolExecutor(256) as pool:
        for text in texts:
            due += arrivals.expovariate(rate)
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(timed, text)
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
        for name, call in calls.items():
            saturation = max(results[(name, c)][0] for c in CONCURRENCY)
            results[(name, HALF)] = measure_open_loop(call, texts, saturation / 2)
        rss = rss_mib(mesh.pid("inference"))
        http.close()
        direct.close()
        edge.close()
    finally:
        mesh.stop()
    return results, rss


def report(args: argparse.Namespace) -> None:
    texts = sentences(args.texts)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, preset {args.preset}, default"
        f" settings, {len(texts)} Amazon review test sentences per condition,"
        f" {args.rounds} rounds"
    )
    raw_rates: dict[tuple[str, int], list[float]] = defaultdict(list)
    figures: dict[tuple[str, int], list[Figures]] = defaultdict(list)
    rss: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        started = time.monotonic()
        artifact = bootstrap(data_dir, args.preset)
        print(f"# bootstrapped in {time.monotonic() - started:.0f} s", flush=True)
        for round_number in range(args.rounds):
            for key, rate in raw_engines(data_dir, artifact, texts).items():
                raw_rates[key].append(rate)
            results, resident = by_path(data_dir, texts)
            rss.append(resident)
            for key, value in results.items():
                figures[key].append(value)
            print(f"# round {round_number + 1} done", flush=True)
        baseline = print_raw(raw_rates, served_graph(data_dir, artifact))
        quality = test_set_quality(data_dir, artifact)
    print(
        "\ntest-set macro-F1 (all Amazon test sentences): "
        + ", ".join(f"{name} {f1:.4f}" for name, f1 in quality.items())
    )
    print(f"\ninference process RSS with the model loaded: {statistics.median(rss):.0f} MiB")
    print("\nserved, default settings (median of rounds)")
    print(
        f"  {'path':<16} {'clients':>9} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'p99/p50':>7} {'/ best raw':>10} {'/ torch b1':>10}"
    )
    for (name, concurrency), values in figures.items():
        rate, p50, p99 = medians(values)
        load = "half sat." if concurrency == HALF else str(concurrency)
        print(
            f"  {name:<16} {load:>9} {rate:8.1f} {p50:8.1f} {p99:8.1f} {p99 / p50:7.2f}"
            f" {rate / baseline['best']:10.2f} {rate / baseline['torch_b1']:10.2f}"
        )


# Fifteen times as often as deploy/prometheus/prometheus.yml scrapes: an upper bound.
SCRAPE_SECONDS = 1.0


def compare_metrics_cost(args: argparse.Namespace) -> None:
    texts = sentences(args.texts)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, preset {args.preset},"
        f" {len(texts)} Amazon review test sentences per condition, {args.rounds} rounds,"
        " gRPC direct to InferenceService, default batch size"
    )
    conditions = {"off": {"SENTILOOP_METRICS_ENABLED": "false"}, "on": {}}
    scrape_every = {"off": None, "on": SCRAPE_SECONDS}
    rates: dict[tuple[str, int], list[Figures]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        bootstrap(data_dir, args.preset)
        for round_number in range(args.rounds):
            order = list(conditions) if round_number % 2 == 0 else list(conditions)[::-1]
            for name in order:
                figures = served(
                    data_dir, 4, texts, extra_env=conditions[name], scrape_every=scrape_every[name]
                )
                for concurrency, measured in figures.items():
                    rates[(name, concurrency)].append(measured)
            print(f"# round {round_number + 1} done ({' then '.join(order)})", flush=True)
    print("\nmetrics off (baseline) and on, median of rounds")
    print(
        f"  {'metrics':>7} {'clients':>7} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'on / off':>8}"
    )
    for concurrency in CONCURRENCY:
        off = medians(rates[("off", concurrency)])
        for name in conditions:
            rate, p50, p99 = medians(rates[(name, concurrency)])
            print(
                f"  {name:>7} {concurrency:>7} {rate:8.1f} {p50:8.1f} {p99:8.1f}"
                f" {rate / off[0]:8.3f}"
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
                    data_dir, 4, texts, replicas, concurrency_levels=(16, 64), open_rate=args.rate
                ).items():
                    rates[(replicas, concurrency)].append(figures)
            print(f"# round {round_number + 1} done", flush=True)
    base = {c: medians(rates[(1, c)])[0] for c in (16, 64, HALF)}
    print(f"  {'replicas':>8} {'clients':>7} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'/ 1':>6}")
    for (replicas, concurrency), figures in rates.items():
        rate, p50, p99 = medians(figures)
        load = f"{args.rate:.0f}/s" if concurrency == HALF else str(concurrency)
        print(
            f"  {replicas:>8} {load:>7} {rate:8.1f} {p50:8.1f} {p99:8.1f}"
            f" {rate / base[concurrency]:6.2f}"
        )


if __name__ == "__main__":
    main()
