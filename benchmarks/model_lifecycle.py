"""One run of the model lifecycle on the real mesh: bootstrap (default MiniLM preset,
auto-deploy) on the Amazon review sentences, then Predict latency over real review
sentences: gRPC straight to InferenceService (the baseline) vs through Envoy, gRPC and JSON.

    .venv/bin/python benchmarks/model_lifecycle.py [--preset minilm] [--calls 500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from latency import print_latency_table

from sentiloop.data import vader
from sentiloop.testing import start_mesh
from sentiloop.v1 import inference_pb2, inference_pb2_grpc, model_init_pb2, model_init_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="minilm")
    parser.add_argument("--calls", type=int, default=500, help="Predict calls per path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_mesh(Path(tmp))
        channel = mesh.operator_channel()
        model_init = model_init_pb2_grpc.ModelInitServiceStub(channel)
        started = time.monotonic()
        job = model_init.Bootstrap(
            model_init_pb2.BootstrapRequest(auto_deploy=True, preset=args.preset)
        )
        updates = list(
            model_init.WatchTrainingJob(
                model_init_pb2.WatchTrainingJobRequest(job_name=job.job_name)
            )
        )
        last = updates[-1] if updates else None
        trained = time.monotonic() - started
        assert last is not None and last.job.status == "Completed", last
        while model_init.GetEndpointStatus(model_init_pb2.GetEndpointStatusRequest()).status != (
            "InService"
        ):
            time.sleep(0.2)
        serving = time.monotonic() - started
        metrics = json.loads(
            (
                Path(tmp) / "model_init" / "jobs" / job.job_name / "model" / "metrics.json"
            ).read_text()
        )

        texts = [e.text for e in vader.split_examples(vader.load_domain("amazon"))["test"]]
        direct = grpc.insecure_channel(mesh.address("inference"))
        direct_stub = inference_pb2_grpc.InferenceServiceStub(direct)
        envoy_stub = inference_pb2_grpc.InferenceServiceStub(channel)
        http = httpx.Client(base_url=mesh.url)
        paths = {
            "gRPC direct": lambda t: direct_stub.Predict(inference_pb2.PredictRequest(text=t)),
            "gRPC via Envoy": lambda t: envoy_stub.Predict(inference_pb2.PredictRequest(text=t)),
            "JSON via Envoy": lambda t: http.post("/predict", json={"text": t}).raise_for_status(),
        }
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for call in paths.values():
            for text in texts[:20]:
                call(text)
        for i in range(args.calls):
            text = texts[i % len(texts)]
            for name, call in paths.items():  # interleaved: same sentence, same moment
                begin = time.perf_counter()
                call(text)
                samples[name].append((time.perf_counter() - begin) * 1000)
        http.close()
        direct.close()
        channel.close()
        mesh.stop()

    test = metrics["test"]
    print(
        f"preset {args.preset}: trained in {trained:.0f} s (bootstrap -> Completed),"
        f" serving after {serving:.0f} s"
    )
    print(f"  train.py's own training time: {metrics.get('train_seconds', float('nan')):.0f} s")
    print(
        f"  test set: {test['total_samples']} sentences, accuracy {test['accuracy']:.4f},"
        f" macro-F1 {test['macro_f1']:.4f}"
    )
    print(f"  confusion matrix (rows true, columns predicted: {test['confusion_matrix_labels']}):")
    for label, row in zip(test["confusion_matrix_labels"], test["confusion_matrix"], strict=True):
        print(f"    {label:<9} {row}")
    print_latency_table(
        f"Predict latency, {args.calls} real review sentences per path (ms):",
        samples,
        "gRPC direct",
        2,
    )


if __name__ == "__main__":
    main()
