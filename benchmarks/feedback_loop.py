"""The feedback loop on real data, default MiniLM preset: bootstrap on the Amazon review
sentences, measure macro-F1 on held-out rated tweets (another domain), send ~400 labelled
tweets as feedback citing the model's predictions, let the policy retrain, and measure
again on the same held-out tweets and the Amazon test set. The same feedback is then
retrained from the same v1 with other seeds, and with the naive recipe as the baseline.

    .venv/bin/python benchmarks/feedback_loop.py [--seeds 13 1 2] [--feedback 400]

Target (issue #4): tweets macro-F1 up >= 8 points, Amazon test down <= 1 point, with the
gate promoting on its own, in each seed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from sentiloop.core.artifacts import unpack_artifact
from sentiloop.core.objectstore import LocalObjectStore
from sentiloop.core.scripts import load_script
from sentiloop.data import vader
from sentiloop.evaluation.scoring import labelled, metrics, predict_labels
from sentiloop.testing import start_mesh
from sentiloop.v1 import (
    feedback_pb2,
    feedback_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    model_init_pb2,
    model_init_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    retraining_pb2,
    retraining_pb2_grpc,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 1, 2])
    parser.add_argument("--feedback", type=int, default=400)
    parser.add_argument("--preset", default="minilm")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    tweets = vader.split_examples(vader.load_domain("tweets"))
    feedback_pool = tweets["train"][: args.feedback]
    held_out = labelled([(e.text, e.label) for e in tweets["test"]])
    amazon = vader.split_examples(vader.load_domain("amazon"))["test"]
    amazon_test = labelled([(e.text, e.label) for e in amazon])

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "SENTILOOP_DEFAULT_PRESET": args.preset,
            "SENTILOOP_RETRAIN_AUTO": "true",
            "SENTILOOP_RETRAIN_MIN_NEW_FEEDBACK": str(args.feedback),
            "SENTILOOP_RETRAIN_COOLDOWN_SECONDS": "86400",
            "SENTILOOP_RETRAIN_POLL_SECONDS": "1",
            "SENTILOOP_INFERENCE_POLL_SECONDS": "0.5",
        }
        mesh = start_mesh(Path(tmp), extra_env=env)
        store = LocalObjectStore(Path(tmp) / "objects")
        inference_module = load_script("inference")
        channel = grpc.insecure_channel(
            mesh.envoy_address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        model_init = model_init_pb2_grpc.ModelInitServiceStub(channel)
        registry = registry_pb2_grpc.ModelRegistryServiceStub(channel)
        retraining = retraining_pb2_grpc.RetrainingServiceStub(channel)
        inference = inference_pb2_grpc.InferenceServiceStub(channel)
        feedback = feedback_pb2_grpc.FeedbackServiceStub(channel)

        def measure(version: str) -> dict[str, float]:
            path = registry.GetModel(registry_pb2.GetModelRequest(version=version)).model.path
            model = inference_module.model_fn(
                str(unpack_artifact(store, path, Path(tmp) / "bench-cache"))
            )
            return {
                "tweets": metrics(held_out.labels, predict_labels(model, held_out.texts))[
                    "macro_f1"
                ],
                "amazon": metrics(amazon_test.labels, predict_labels(model, amazon_test.texts))[
                    "macro_f1"
                ],
            }

        def serving() -> str:
            status = model_init.GetEndpointStatus(model_init_pb2.GetEndpointStatusRequest())
            return status.model_version if status.status == "InService" else ""

        started = time.monotonic()
        model_init.Bootstrap(model_init_pb2.BootstrapRequest(auto_deploy=True))
        while serving() != "v1":
            time.sleep(1)
        print(
            f"bootstrap ({args.preset}): v1 serving after {time.monotonic() - started:.0f} s",
            flush=True,
        )
        baseline = measure("v1")
        print(
            f"v1: held-out tweets macro-F1 {baseline['tweets']:.4f}, Amazon test {baseline['amazon']:.4f}",
            flush=True,
        )

        for i in range(0, len(feedback_pool), 32):
            chunk = feedback_pool[i : i + 32]
            answer = inference.PredictBatch(
                inference_pb2.PredictBatchRequest(texts=[e.text for e in chunk])
            )
            for example, prediction in zip(chunk, answer.predictions, strict=True):
                feedback.SubmitFeedback(
                    feedback_pb2.SubmitFeedbackRequest(
                        prediction_id=prediction.prediction_id, user_label=example.label.lower()
                    )
                )
        last_feedback = time.monotonic()
        print(f"sent {len(feedback_pool)} feedback records citing their predictions", flush=True)

        results: list[dict[str, Any]] = []

        def record(recipe: str, seed: int, job_name: str, trigger: str) -> dict[str, Any]:
            models = registry.ListModels(registry_pb2.ListModelsRequest()).models
            model = next(m for m in models if m.training_job_name == job_name)
            numbers = measure(model.version)
            row = {
                "recipe": recipe,
                "seed": seed,
                "trigger": trigger,
                "version": model.version,
                "decision": model.gate.decision,
                "tweets": numbers["tweets"],
                "amazon": numbers["amazon"],
                "d_tweets": (numbers["tweets"] - baseline["tweets"]) * 100,
                "d_amazon": (numbers["amazon"] - baseline["amazon"]) * 100,
                "gate_reason": model.gate.reason,
            }
            results.append(row)
            print(
                f"  {recipe:<8} seed {seed:<3} {model.version:<4} gate {row['decision']:<9}"
                f" tweets {row['d_tweets']:+6.1f}  amazon {row['d_amazon']:+5.1f} points",
                flush=True,
            )
            return row

        # The policy's run: default recipe, seed 13.
        job_name = ""
        while not job_name:
            job_name = retraining.GetPolicy(retraining_pb2.GetPolicyRequest()).running_job_name
            time.sleep(0.5)
        while retraining.GetPolicy(retraining_pb2.GetPolicyRequest()).running_job_name:
            time.sleep(0.5)
        first = record("default", 13, job_name, "policy")
        if first["decision"] == "promoted":
            while serving() != first["version"]:
                time.sleep(0.2)
            print(
                f"  last feedback -> {first['version']} serving: {time.monotonic() - last_feedback:.0f} s",
                flush=True,
            )

        runs = [("default", s) for s in args.seeds if s != 13]
        if not args.skip_naive:
            runs += [("naive", s) for s in args.seeds]
        for recipe, seed in runs:
            registry.ActivateModel(
                registry_pb2.ActivateModelRequest(version="v1", reason="benchmark: same baseline")
            )
            answer = retraining.Retrain(
                retraining_pb2.RetrainRequest(recipe=recipe, seed=seed), timeout=3600
            )
            record(recipe, seed, answer.training_job_name, "manual")
        mesh.stop()

    print()
    print(
        f"baseline v1: held-out tweets macro-F1 {baseline['tweets']:.4f} ({len(held_out.texts)} tweets),"
        f" Amazon test macro-F1 {baseline['amazon']:.4f} ({len(amazon_test.texts)} sentences)"
    )
    print(
        f"{'recipe':<8} {'seed':>4} {'trigger':<7} {'gate':<9} {'tweets F1':>9} {'Δ pts':>6} {'amazon F1':>9} {'Δ pts':>6}  target"
    )
    for row in results:
        met = row["d_tweets"] >= 8 and row["d_amazon"] >= -1 and row["decision"] == "promoted"
        print(
            f"{row['recipe']:<8} {row['seed']:>4} {row['trigger']:<7} {row['decision']:<9}"
            f" {row['tweets']:9.4f} {row['d_tweets']:+6.1f} {row['amazon']:9.4f} {row['d_amazon']:+6.1f}"
            f"  {'met' if met else 'missed'}"
        )
    for row in results:
        print(f"  {row['recipe']} seed {row['seed']}: {row['gate_reason']}")


if __name__ == "__main__":
    main()
