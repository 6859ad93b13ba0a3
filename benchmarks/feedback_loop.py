"""The feedback loop end to end on real data, under `make run`'s default policy.

v1 is bootstrapped once (MiniLM on the Amazon review sentences) and its state saved; every
scenario then starts a fresh mesh from that same state, sends 400 labelled sentences as one
burst (feedback citing the model's own predictions), and lets the automatic policy do the
rest: it must start exactly one run on all 400 labels, cross-fit, gate and (when promoted)
serve the new version. Measured per scenario: the gate's decision, macro-F1 on the new
domain's large held-out split and on the Amazon test set before and after, and the wall
time from the last label to the new version serving.

Scenarios: each domain (VADER tweets, movie-review and editorial sentences) with seeds
13, 1 and 2 (the seed picks the 400 labels and seeds training), then the gate's null
cases: a candidate trained on a domain's 400 texts with shuffled labels (the first domain's,
or the first --shuffled domains'), and one
trained on 400 more sentences of the original (Amazon) distribution. The gate's error
rates are measured by re-running its decision on stored predictions (75% subsamples of
the feedback and of the test set, new bootstrap seeds): no new training per decision.

    .venv/bin/python benchmarks/feedback_loop.py [--domains tweets movies editorials]
        [--seeds 13 1 2] [--feedback 400] [--decisions 25] [--no-null]

Targets (issue #9): every domain and seed promoted by the gate on its own, >= +8 macro-F1
points on the domain, >= -1 point on the test set; null candidates promoted in <= 5% of
decisions; last label -> serving <= 5 minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from sentiloop.core.artifacts import unpack_artifact
from sentiloop.core.objectstore import LocalObjectStore
from sentiloop.core.scripts import load_script
from sentiloop.data import vader
from sentiloop.data.scoring import (
    CROSSFIT_FILE,
    compare,
    labelled,
    metrics,
    predict_labels,
    read_crossfit_csv,
)
from sentiloop.retraining.gate import decide
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


@dataclass
class Scenario:
    domain: str  # where the 400 labels come from
    seed: int
    kind: str  # real | shuffled | in-distribution
    examples: list[vader.Example] = field(default_factory=list)


@dataclass
class Result:
    scenario: Scenario
    runs: int = 0
    version: str = ""
    decision: str = ""
    reason: str = ""
    gate_feedback: dict[str, float] = field(default_factory=dict)
    domain_f1: float = 0.0
    d_domain: float = 0.0
    d_test: float = 0.0
    to_serving: float | None = None
    subsample_promotions: int = 0
    subsample_decisions: int = 0


def retrained(registry: registry_pb2_grpc.ModelRegistryServiceStub) -> list[Any]:
    models = registry.ListModels(registry_pb2.ListModelsRequest()).models
    return [m for m in models if m.source == "retraining"]


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    chosen = []
    for domain in args.domains:
        pool = vader.split_examples(vader.load_domain(domain))["train"]
        for seed in args.seeds:
            sample = random.Random(seed).sample(pool, args.feedback)
            chosen.append(Scenario(domain, seed, "real", sample))
    if args.null:
        for domain in args.domains[: args.shuffled]:
            pool = vader.split_examples(vader.load_domain(domain))["train"]
            sample = random.Random(13).sample(pool, args.feedback)
            labels = [e.label for e in sample]
            random.Random(99).shuffle(labels)
            shuffled = [
                vader.Example(e.text, label) for e, label in zip(sample, labels, strict=True)
            ]
            chosen.append(Scenario(domain, 13, "shuffled", shuffled))
        # Sentences from the original distribution the model was not trained on.
        amazon_validation = vader.split_examples(vader.load_domain("amazon"))["validation"]
        sample = random.Random(13).sample(
            amazon_validation, min(args.feedback, len(amazon_validation))
        )
        chosen.append(Scenario("amazon", 13, "in-distribution", sample))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", nargs="+", default=["tweets", "movies", "editorials"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 1, 2])
    parser.add_argument("--feedback", type=int, default=400)
    parser.add_argument("--preset", default="minilm")
    parser.add_argument("--decisions", type=int, default=25, help="gate re-runs per scenario")
    parser.add_argument("--no-null", dest="null", action="store_false")
    parser.add_argument(
        "--workdir", type=Path, help="keep state here; a v1 saved there by an earlier run is reused"
    )
    parser.add_argument(
        "--shuffled", type=int, default=1, help="domains with a shuffled-label null candidate"
    )
    args = parser.parse_args()

    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
        f" torch {torch.__version__} threads {torch.get_num_threads()},"
        f" cuda {torch.cuda.is_available() and os.environ.get('SENTILOOP_DEVICE') != 'cpu'}",
        flush=True,
    )
    amazon_test_examples = vader.split_examples(vader.load_domain("amazon"))["test"]
    amazon_test = labelled([(e.text, e.label) for e in amazon_test_examples])
    held_out = {
        d: labelled([(e.text, e.label) for e in vader.split_examples(vader.load_domain(d))["test"]])
        for d in args.domains
    }
    inference_module = load_script("inference")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="sentiloop-feedback-loop-"))
    state, golden = root / "state", root / "golden"

    def channel_for(mesh: Any) -> grpc.Channel:
        return mesh.operator_channel(options=[("grpc.max_receive_message_length", 64 << 20)])

    def mesh_env(seed: int) -> dict[str, str]:
        # make run's defaults, only the seed of the policy's runs named.
        return {
            "SENTILOOP_DEFAULT_PRESET": args.preset,
            "SENTILOOP_RETRAIN_AUTO": "true",
            "SENTILOOP_RETRAIN_SEED": str(seed),
        }

    def serving(stub: model_init_pb2_grpc.ModelInitServiceStub) -> str:
        status = stub.GetEndpointStatus(model_init_pb2.GetEndpointStatusRequest())
        return status.model_version if status.status == "InService" else ""

    # ---- v1, once
    if not golden.is_dir():
        started = time.monotonic()
        shutil.rmtree(state, ignore_errors=True)
        mesh = start_mesh(state, extra_env=mesh_env(13))
        channel = channel_for(mesh)
        model_init = model_init_pb2_grpc.ModelInitServiceStub(channel)
        model_init.Bootstrap(model_init_pb2.BootstrapRequest(auto_deploy=True))
        while serving(model_init) != "v1":
            time.sleep(1)
        channel.close()
        mesh.stop()
        shutil.copytree(state, golden, symlinks=True)
        print(f"bootstrap ({args.preset}): v1 serving after {time.monotonic() - started:.0f} s")
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(golden, state, symlinks=True)
    v1_path = next((state / "objects" / "models").glob("*/output/model.tar.gz")).as_posix()

    store = LocalObjectStore(state / "objects")
    cache = root / "models"
    v1 = inference_module.model_fn(str(unpack_artifact(store, v1_path, cache)))
    base_test = predict_labels(v1, amazon_test.texts)
    base_test_f1 = metrics(amazon_test.labels, base_test)["macro_f1"]
    base_domain = {
        d: metrics(data.labels, predict_labels(v1, data.texts))["macro_f1"]
        for d, data in held_out.items()
    }
    print(
        f"v1: Amazon test macro-F1 {base_test_f1:.4f} ({len(amazon_test.texts)});"
        + "".join(f" {d} {f1:.4f} ({len(held_out[d].texts)})" for d, f1 in base_domain.items()),
        flush=True,
    )

    results: list[Result] = []
    for scenario in scenarios(args):
        result = Result(scenario)
        shutil.rmtree(state)
        shutil.copytree(golden, state, symlinks=True)
        mesh = start_mesh(state, extra_env=mesh_env(scenario.seed))
        channel = channel_for(mesh)
        inference = inference_pb2_grpc.InferenceServiceStub(channel)
        feedback = feedback_pb2_grpc.FeedbackServiceStub(channel)
        retraining = retraining_pb2_grpc.RetrainingServiceStub(channel)
        registry = registry_pb2_grpc.ModelRegistryServiceStub(channel)
        model_init = model_init_pb2_grpc.ModelInitServiceStub(channel)

        for i in range(0, len(scenario.examples), 32):
            chunk = scenario.examples[i : i + 32]
            answer = inference.PredictBatch(
                inference_pb2.PredictBatchRequest(texts=[e.text for e in chunk])
            )
            for example, prediction in zip(chunk, answer.predictions, strict=True):
                feedback.SubmitFeedback(
                    feedback_pb2.SubmitFeedbackRequest(
                        prediction_id=prediction.prediction_id, user_label=example.label.lower()
                    )
                )
        last_label = time.monotonic()

        while not retrained(registry):
            time.sleep(1)
        candidate = retrained(registry)[0]
        if candidate.gate.decision == "promoted":
            while serving(model_init) != candidate.version:
                time.sleep(0.5)
            result.to_serving = time.monotonic() - last_label
        time.sleep(5)  # a second run would have started by now if the policy wanted one
        policy_state = retraining.GetPolicy(retraining_pb2.GetPolicyRequest())
        result.runs = len(retrained(registry)) + (1 if policy_state.running_job_name else 0)
        result.version = candidate.version
        result.decision = candidate.gate.decision
        result.reason = candidate.gate.reason
        fb = candidate.gate.feedback
        result.gate_feedback = {
            "samples": fb.samples,
            "delta": fb.delta_macro_f1 * 100,
            "lower": fb.delta_macro_f1_lower_bound * 100,
        }
        channel.close()
        mesh.stop()

        folder = unpack_artifact(store, candidate.path, cache)
        model = inference_module.model_fn(str(folder))
        test_predictions = predict_labels(model, amazon_test.texts)
        result.d_test = (
            metrics(amazon_test.labels, test_predictions)["macro_f1"] - base_test_f1
        ) * 100
        if scenario.domain in held_out:
            data = held_out[scenario.domain]
            result.domain_f1 = metrics(data.labels, predict_labels(model, data.texts))["macro_f1"]
            result.d_domain = (result.domain_f1 - base_domain[scenario.domain]) * 100

        # The gate again on stored predictions: subsamples of both sets, new seeds.
        crossfit = read_crossfit_csv((folder / CROSSFIT_FILE).read_bytes())
        base_feedback = predict_labels(v1, crossfit.feedback.texts)
        rng = np.random.default_rng(scenario.seed)
        for r in range(args.decisions):
            f = rng.choice(
                len(crossfit.predictions), int(0.75 * len(crossfit.predictions)), replace=False
            )
            t = rng.choice(
                len(amazon_test.labels), int(0.75 * len(amazon_test.labels)), replace=False
            )
            decision = decide(
                compare(
                    "test", [amazon_test.labels[i] for i in t], [test_predictions[i] for i in t],
                    [base_test[i] for i in t], seed=1000 + r,
                ),
                compare(
                    "feedback", [crossfit.feedback.labels[i] for i in f],
                    [crossfit.predictions[i] for i in f], [base_feedback[i] for i in f],
                    seed=1000 + r, folds=crossfit.folds,
                ),
                "v1",
            )  # fmt: skip
            result.subsample_promotions += decision.promoted
            result.subsample_decisions += 1
        results.append(result)
        del model
        print(
            f"  {scenario.kind:<15} {scenario.domain:<10} seed {scenario.seed:<3} runs {result.runs}"
            f" {result.decision:<9} gate Δ {result.gate_feedback['delta']:+5.1f} (≥ {result.gate_feedback['lower']:+5.1f})"
            f" domain Δ {result.d_domain:+6.1f} test Δ {result.d_test:+5.1f}"
            f" serving after {'-' if result.to_serving is None else f'{result.to_serving:.0f} s'}"
            f" re-runs promoted {result.subsample_promotions}/{result.subsample_decisions}",
            flush=True,
        )
    shutil.rmtree(root, ignore_errors=True)
    report(results, base_domain, base_test_f1)


def report(results: list[Result], base_domain: dict[str, float], base_test_f1: float) -> None:
    print()
    print(
        f"v1: Amazon test macro-F1 {base_test_f1:.4f};"
        + "".join(f" {d} {f1:.4f}" for d, f1 in base_domain.items())
    )
    print(
        f"{'kind':<15} {'domain':<10} {'seed':>4} {'runs':>4} {'gate':<9} {'gate Δ (≥)':>13}"
        f" {'domain F1':>9} {'Δ pts':>6} {'test Δ':>6} {'→ serving':>9} {'re-runs':>7}  target"
    )
    for r in results:
        real = r.scenario.kind == "real"
        met = (
            r.runs == 1
            and r.gate_feedback["samples"] == len({e.text for e in r.scenario.examples})
            and r.decision == "promoted"
            and r.d_domain >= 8
            and r.d_test >= -1
            and r.to_serving is not None
            and r.to_serving <= 300
        ) if real else r.decision == "rejected"  # fmt: skip
        print(
            f"{r.scenario.kind:<15} {r.scenario.domain:<10} {r.scenario.seed:>4} {r.runs:>4}"
            f" {r.decision:<9} {r.gate_feedback['delta']:+5.1f} ({r.gate_feedback['lower']:+5.1f})"
            f" {r.domain_f1:9.4f} {r.d_domain:+6.1f} {r.d_test:+6.1f}"
            f" {'-' if r.to_serving is None else f'{r.to_serving:.0f} s':>9}"
            f" {r.subsample_promotions:>3}/{r.subsample_decisions:<3}  {'met' if met else 'missed'}"
        )
    real = [r for r in results if r.scenario.kind == "real"]
    null = [r for r in results if r.scenario.kind != "real"]
    worthy = [r for r in real if r.d_domain >= 3 and r.d_test >= -1]
    if worthy:
        print(
            f"power: {sum(r.decision == 'promoted' for r in worthy)}/{len(worthy)} candidates"
            " >= 3 points better (and within tolerance on the test set) promoted; on re-runs"
            f" {sum(r.subsample_promotions for r in worthy)}/{sum(r.subsample_decisions for r in worthy)}"
        )
    if null:
        decisions = len(null) + sum(r.subsample_decisions for r in null)
        promoted = sum(r.decision == "promoted" for r in null) + sum(
            r.subsample_promotions for r in null
        )
        print(
            f"false promotions: {promoted}/{decisions} null decisions ({promoted / decisions:.1%})"
        )
    times = [r.to_serving for r in real if r.to_serving is not None]
    if times:
        print(
            f"last label -> serving: median {statistics.median(times):.0f} s, max {max(times):.0f} s"
            f" over {len(times)} promoted runs"
        )
    for r in results:
        print(f"  {r.scenario.kind} {r.scenario.domain} seed {r.scenario.seed}: {r.reason}")


if __name__ == "__main__":
    main()
