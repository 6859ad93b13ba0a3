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

`--active-learning` measures instead, from the same saved v1, what the labelling queue
(GET /feedback/requests) buys on the tweets domain. For each seed, a fresh mesh predicts
--traffic tweets of the train split (a seeded sample, through Envoy, so they are in the
prediction log), then --budget labels are given: either by **active learning** (each
request of ListLabelRequests, pages of up to 100, answered with its true label citing its
prediction id, audit samples at the product's default share included) or, on another
fresh mesh with the same traffic, for predictions drawn uniformly at random (seeded). Each
then retrains explicitly (RetrainingService.Retrain with the seed, waiting for it; the
product's default recipe, no automatic policy), and the candidate is scored here, through
inference.py's predict path, on the tweets test split whatever the gate decided: macro-F1
of v1 and the candidate, the lift, and active learning's lift minus random's, per seed and
median. The two strategies alternate which goes first from seed to seed. Also reported:
the expected calibration error (15 bins) before and after temperature scaling from each
artifact's `calibration` record (the training data's test split), and on the tweets test
split with the fitted temperature and with T = 1; and the drift score (GET /predict/drift,
scored every second over a window of --drift-window) of Amazon test sentences and of
tweets, each predicted on a fresh mesh serving v1.

    .venv/bin/python benchmarks/feedback_loop.py --active-learning [--seeds 13 1 2]
        [--traffic 1000] [--budget 200] [--drift-window 500] [--preset minilm]

Targets (issue #15): active learning's labels lift the tweets macro-F1 more than random
ones; calibration lowers the ECE; the tweets traffic's drift score is over the threshold
and the Amazon traffic's under it.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from sentiloop.core.artifacts import unpack_artifact
from sentiloop.core.config import Settings
from sentiloop.core.objectstore import LocalObjectStore
from sentiloop.core.scripts import load_script
from sentiloop.data import vader
from sentiloop.data.scoring import (
    CROSSFIT_FILE,
    Labelled,
    compare,
    labelled,
    metrics,
    predict,
    predict_labels,
    read_crossfit_csv,
)
from sentiloop.retraining.gate import GateRules, decide
from sentiloop.testing import RunningMesh, start_mesh, wait_for
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


def gate_rules() -> GateRules:
    """The promotion gate's rules at the product's default settings."""
    fields = Settings.model_fields
    return GateRules(
        tolerance=fields["gate_tolerance"].default,
        class_floor=fields["gate_class_floor"].default,
        min_gain=fields["gate_min_gain"].default,
        ece_tolerance=fields["gate_ece_tolerance"].default,
        shadow_min_labelled=fields["gate_shadow_min_labelled"].default,
    )


def channel_for(mesh: RunningMesh) -> grpc.Channel:
    return mesh.operator_channel(options=[("grpc.max_receive_message_length", 64 << 20)])


def serving(stub: model_init_pb2_grpc.ModelInitServiceStub) -> str:
    status = stub.GetEndpointStatus(model_init_pb2.GetEndpointStatusRequest())
    return status.model_version if status.status == "InService" else ""


class Lab:
    """v1, bootstrapped once and its data directory saved: every mesh starts from a fresh
    copy of that state, and artifacts are loaded here through inference.py's model_fn."""

    def __init__(self, root: Path, preset: str) -> None:
        self.root, self.preset = root, preset
        self.state, self.golden = root / "state", root / "golden"
        self.store = LocalObjectStore(self.state / "objects")
        self.cache = root / "models"
        self.inference = load_script("inference")
        self.v1_path = ""

    def bootstrap_v1(self) -> None:
        if not self.golden.is_dir():
            started = time.monotonic()
            shutil.rmtree(self.state, ignore_errors=True)
            mesh = start_mesh(self.state, extra_env={"SENTILOOP_DEFAULT_PRESET": self.preset})
            channel = channel_for(mesh)
            model_init = model_init_pb2_grpc.ModelInitServiceStub(channel)
            model_init.Bootstrap(model_init_pb2.BootstrapRequest(auto_deploy=True))
            while serving(model_init) != "v1":
                time.sleep(1)
            channel.close()
            mesh.stop()
            shutil.copytree(self.state, self.golden, symlinks=True)
            print(f"bootstrap ({self.preset}): v1 serving after {time.monotonic() - started:.0f} s")
        self.reset()
        models = self.state / "objects" / "models"
        self.v1_path = next(models.glob("*/output/model.tar.gz")).as_posix()

    def reset(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.copytree(self.golden, self.state, symlinks=True)

    def start(self, extra_env: dict[str, str]) -> RunningMesh:
        """A mesh on a fresh copy of v1's state."""
        self.reset()
        return start_mesh(
            self.state, extra_env={"SENTILOOP_DEFAULT_PRESET": self.preset, **extra_env}
        )

    @contextmanager
    def mesh(self, extra_env: dict[str, str]) -> Iterator[grpc.Channel]:
        mesh = self.start(extra_env)
        channel = channel_for(mesh)
        try:
            yield channel
        finally:
            channel.close()
            mesh.stop()

    def load(self, path: str) -> tuple[Any, Path]:
        """An artifact of the store (v1's or a candidate's), as InferenceService loads it."""
        folder = unpack_artifact(self.store, path, self.cache)
        return self.inference.model_fn(str(folder)), folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--domains", nargs="+", default=["tweets", "movies", "editorials"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 1, 2])
    parser.add_argument("--feedback", type=int, default=400)
    parser.add_argument("--preset", default="minilm", help="v1's bootstrap preset (tiny: fast)")
    parser.add_argument("--decisions", type=int, default=25, help="gate re-runs per scenario")
    parser.add_argument("--no-null", dest="null", action="store_false")
    parser.add_argument(
        "--workdir", type=Path, help="keep state here; a v1 saved there by an earlier run is reused"
    )
    parser.add_argument(
        "--shuffled", type=int, default=1, help="domains with a shuffled-label null candidate"
    )
    parser.add_argument(
        "--active-learning",
        action="store_true",
        help="labels chosen by GET /feedback/requests against random ones on tweets; ECE; drift",
    )
    parser.add_argument(
        "--traffic", type=int, default=1000, help="tweets predicted before labelling (per seed)"
    )
    parser.add_argument("--budget", type=int, default=200, help="labels per strategy and seed")
    parser.add_argument(
        "--drift-window", type=int, default=500, help="texts of each drift measurement"
    )
    args = parser.parse_args()

    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
        f" torch {torch.__version__} threads {torch.get_num_threads()},"
        f" cuda {torch.cuda.is_available() and os.environ.get('SENTILOOP_DEVICE') != 'cpu'}",
        flush=True,
    )
    print(f"command: {shlex.join(['python', *sys.argv])}; preset {args.preset}", flush=True)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="sentiloop-feedback-loop-"))
    lab = Lab(root, args.preset)
    try:
        lab.bootstrap_v1()
        if args.active_learning:
            active_learning(args, lab)
        else:
            feedback_bursts(args, lab)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def feedback_bursts(args: argparse.Namespace, lab: Lab) -> None:
    amazon_test_examples = vader.split_examples(vader.load_domain("amazon"))["test"]
    amazon_test = labelled([(e.text, e.label) for e in amazon_test_examples])
    held_out = {
        d: labelled([(e.text, e.label) for e in vader.split_examples(vader.load_domain(d))["test"]])
        for d in args.domains
    }

    def mesh_env(seed: int) -> dict[str, str]:
        # make run's defaults, only the seed of the policy's runs named.
        return {"SENTILOOP_RETRAIN_AUTO": "true", "SENTILOOP_RETRAIN_SEED": str(seed)}

    v1 = lab.load(lab.v1_path)[0]
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
        mesh = lab.start(mesh_env(scenario.seed))
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

        model, folder = lab.load(candidate.path)
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
                gate_rules(),
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
        is_real = r.scenario.kind == "real"
        met = (
            r.runs == 1
            and r.gate_feedback["samples"] == len({e.text for e in r.scenario.examples})
            and r.decision == "promoted"
            and r.d_domain >= 8
            and r.d_test >= -1
            and r.to_serving is not None
            and r.to_serving <= 300
        ) if is_real else r.decision == "rejected"  # fmt: skip
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


# ------------------------------------------------------------------ --active-learning


@dataclass
class Labelling:
    """The labels one strategy gave and what its retraining run made of them."""

    strategy: str  # active | random
    seed: int
    labels: int = 0
    audit: int = 0  # answers to audit requests (drawn at random by the queue itself)
    v1_wrong: int = 0  # labels that correct v1's prediction
    by_label: Counter[str] = field(default_factory=Counter)
    uncertainty: float = 0.0  # mean margin uncertainty of v1 on the labelled predictions
    retrain_seconds: float = 0.0
    version: str = ""
    decision: str = ""
    reason: str = ""
    f1: float = 0.0  # candidate's macro-F1 on the tweets test split
    lift: float = 0.0  # in points, over v1's
    ece: tuple[float, float] = (0.0, 0.0)  # tweets test: T = 1, fitted T
    calibration: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    """A model on the tweets test split through the predict path."""

    f1: float
    ece_raw: float  # T = 1
    ece: float  # with its fitted temperature


def score(model: Any, data: Labelled) -> Scored:
    guesses, probabilities = predict(model, data.texts)
    _, raw = predict(replace(model, temperature=1.0), data.texts)
    found = metrics(data.labels, guesses, probabilities)
    raw_ece = float(metrics(data.labels, guesses, raw)["ece"])
    return Scored(float(found["macro_f1"]), raw_ece, float(found["ece"]))


def margin_uncertainty(scores: Any) -> float:
    top = sorted((float(p) for p in scores.values()), reverse=True)
    return 1.0 - (top[0] - top[1])


def send_traffic(
    inference: inference_pb2_grpc.InferenceServiceStub, texts: list[str]
) -> list[inference_pb2.PredictResponse]:
    """Each text through Envoy, in order: the predictions land in the prediction log."""
    predictions: list[inference_pb2.PredictResponse] = []
    for i in range(0, len(texts), 32):
        answer = inference.PredictBatch(inference_pb2.PredictBatchRequest(texts=texts[i : i + 32]))
        predictions.extend(answer.predictions)
    return predictions


def give_labels(
    args: argparse.Namespace,
    lab: Lab,
    strategy: str,
    seed: int,
    traffic: list[vader.Example],
    extra_env: dict[str, str],
) -> tuple[Labelling, str]:
    """A fresh mesh from v1's state: the traffic, --budget labels by the strategy, a
    retraining run. Returns the labelling and the candidate's artifact."""
    result = Labelling(strategy, seed)
    with lab.mesh(extra_env) as channel:
        inference = inference_pb2_grpc.InferenceServiceStub(channel)
        feedback = feedback_pb2_grpc.FeedbackServiceStub(channel)
        predictions = send_traffic(inference, [e.text for e in traffic])
        truth = {
            p.prediction_id: e.label.lower() for e, p in zip(traffic, predictions, strict=True)
        }
        uncertainties: list[float] = []

        def answer(prediction_id: str, predicted: str, scores: Any) -> None:
            label = truth[prediction_id]
            stored = feedback.SubmitFeedback(
                feedback_pb2.SubmitFeedbackRequest(prediction_id=prediction_id, user_label=label)
            ).feedback
            result.labels += 1
            result.audit += stored.audit
            result.v1_wrong += predicted != label
            result.by_label[label] += 1
            uncertainties.append(margin_uncertainty(scores))

        if strategy == "active":
            while result.labels < args.budget:
                page = feedback.ListLabelRequests(
                    feedback_pb2.ListLabelRequestsRequest(
                        page_size=min(100, args.budget - result.labels)
                    )
                ).requests
                if not page:
                    break  # every prediction of the window is labelled
                for request in page:
                    answer(request.prediction_id, request.label, request.scores)
        else:
            for p in random.Random(f"random labels {seed}").sample(predictions, args.budget):
                answer(p.prediction_id, p.label, p.scores)
        result.uncertainty = statistics.fmean(uncertainties) if uncertainties else 0.0

        retraining = retraining_pb2_grpc.RetrainingServiceStub(channel)
        registry = registry_pb2_grpc.ModelRegistryServiceStub(channel)
        started = time.monotonic()
        run = retraining.Retrain(retraining_pb2.RetrainRequest(seed=seed))
        result.retrain_seconds = time.monotonic() - started
        result.version, result.decision = run.model_version, run.gate.decision
        result.reason = run.gate.reason
        path = registry.GetModel(registry_pb2.GetModelRequest(version=run.model_version)).model.path
    return result, path


def calibration_of(lab: Lab, folder: Path) -> dict[str, Any]:
    """The artifact's calibration record (labels.json), {} for one trained before it."""
    record = lab.inference.read_serving_config(folder).get("calibration")
    return record if isinstance(record, dict) else {}


def drift_of(lab: Lab, texts: list[str]) -> Any:
    """The drift score of these texts as the traffic of a fresh mesh serving v1, scored
    every second over a window of exactly them."""
    window = str(len(texts))
    env = {"SENTILOOP_DRIFT_INTERVAL_SECONDS": "1", "SENTILOOP_DRIFT_WINDOW": window}
    with lab.mesh(env) as channel:
        inference = inference_pb2_grpc.InferenceServiceStub(channel)
        send_traffic(inference, texts)

        def scored() -> Any:
            drift = inference.GetDrift(inference_pb2.GetDriftRequest())
            full = drift.window_size >= len(texts) and drift.state in ("ok", "drifted")
            return drift if full else None

        return wait_for(scored, timeout=600, interval=1)


def active_learning(args: argparse.Namespace, lab: Lab) -> None:
    started = time.monotonic()
    tweets = vader.split_examples(vader.load_domain("tweets"))
    test = labelled([(e.text, e.label) for e in tweets["test"]])
    amazon_test = vader.split_examples(vader.load_domain("amazon"))["test"]
    if not args.budget <= args.traffic <= len(tweets["train"]):
        raise SystemExit(f"need --budget <= --traffic <= {len(tweets['train'])} train tweets")
    # The queue chooses from the most recent predictions only; a traffic larger than its
    # default window would give the random strategy texts the queue never sees.
    default_window = Settings.model_fields["label_requests_window"].default
    env = {}
    if args.traffic > default_window:
        env["SENTILOOP_LABEL_REQUESTS_WINDOW"] = str(args.traffic)
    window = max(args.traffic, default_window)
    print(
        f"active learning on tweets: {args.traffic} of {len(tweets['train'])} train tweets"
        f" predicted per seed, {args.budget} labels per strategy, test split {len(test.texts)}"
        f" tweets; label requests window {window}; seeds {' '.join(map(str, args.seeds))}",
        flush=True,
    )

    v1, v1_folder = lab.load(lab.v1_path)
    base = score(v1, test)
    v1_calibration = calibration_of(lab, v1_folder)
    print(
        f"v1 ({args.preset}) on tweets test: macro-F1 {base.f1:.4f}, ECE {base.ece_raw * 100:.1f}"
        f" (T = 1) -> {base.ece * 100:.1f} (T = {v1_calibration.get('temperature', 1.0):.3f})",
        flush=True,
    )
    del v1

    drifts = {}
    for name, examples in (("amazon test", amazon_test), ("tweets test", tweets["test"])):
        sample = random.Random(13).sample(examples, min(args.drift_window, len(examples)))
        drifts[name] = drift_of(lab, [e.text for e in sample])
        d = drifts[name]
        print(
            f"drift of {d.window_size} {name} texts: {d.state} score {d.score:.4f}"
            f" (threshold {d.threshold:.2f})",
            flush=True,
        )

    runs: list[Labelling] = []
    for i, seed in enumerate(args.seeds):
        traffic = random.Random(seed).sample(tweets["train"], args.traffic)
        order = ["active", "random"] if i % 2 == 0 else ["random", "active"]
        for strategy in order:
            result, path = give_labels(args, lab, strategy, seed, traffic, env)
            model, folder = lab.load(path)
            scored = score(model, test)
            del model
            result.f1, result.ece = scored.f1, (scored.ece_raw, scored.ece)
            result.lift = (scored.f1 - base.f1) * 100
            result.calibration = calibration_of(lab, folder)
            runs.append(result)
            print(
                f"  seed {seed:<3} {strategy:<6} {result.labels} labels (audit {result.audit},"
                f" v1 wrong on {result.v1_wrong}) retrain {result.retrain_seconds:.0f} s"
                f" {result.version} {result.decision:<8} tweets macro-F1 {result.f1:.4f}"
                f" ({result.lift:+.1f} pts)",
                flush=True,
            )
    report_active_learning(args, runs, base, v1_calibration, drifts)
    print(f"total {time.monotonic() - started:.0f} s")


def report_active_learning(
    args: argparse.Namespace,
    runs: list[Labelling],
    base: Scored,
    v1_calibration: dict[str, Any],
    drifts: dict[str, Any],
) -> None:
    print()
    print(
        f"{args.budget} labels per strategy from {args.traffic} tweets of traffic, v1 {args.preset}:"
        " macro-F1 on the tweets test split, lift in points; margin: v1's mean margin"
        " uncertainty on the labelled predictions"
    )
    print(
        f"{'seed':>6} {'strategy':<8} {'labels':>6} {'audit':>5} {'v1 wrong':>8}"
        f" {'neg/neu/pos':>11} {'margin':>6} {'gate':<9} {'retrain':>7}"
        f" {'v1 F1':>6} {'cand F1':>7} {'lift':>6}"
    )
    for r in runs:
        counts = "/".join(str(r.by_label[label]) for label in ("negative", "neutral", "positive"))
        print(
            f"{r.seed:>6} {r.strategy:<8} {r.labels:>6} {r.audit:>5} {r.v1_wrong:>8}"
            f" {counts:>11} {r.uncertainty:6.3f} {r.decision:<9} {r.retrain_seconds:6.0f}s"
            f" {base.f1:6.4f} {r.f1:7.4f} {r.lift:+6.1f}"
        )
    by = {(r.seed, r.strategy): r for r in runs}
    for strategy in ("active", "random"):
        mine = [r for r in runs if r.strategy == strategy]
        print(
            f"{'median':>6} {strategy:<8} {'':>6} {'':>5} {'':>8} {'':>11} {'':>6} {'':<9}"
            f" {statistics.median(r.retrain_seconds for r in mine):6.0f}s {base.f1:6.4f}"
            f" {statistics.median(r.f1 for r in mine):7.4f}"
            f" {statistics.median(r.lift for r in mine):+6.1f}"
        )
    gaps = [by[seed, "active"].lift - by[seed, "random"].lift for seed in args.seeds]
    ahead = sum(gap > 0 for gap in gaps)
    print(
        "active learning's lift minus random's:"
        + "".join(f" seed {seed} {gap:+.1f}" for seed, gap in zip(args.seeds, gaps, strict=True))
        + f"; median {statistics.median(gaps):+.1f} pts, ahead in {ahead}/{len(gaps)} seeds"
        + f"  target (more lift than random): {'met' if statistics.median(gaps) > 0 else 'missed'}"
    )
    print(
        f"retraining: RetrainingService.Retrain, the product's defaults; one run took"
        f" {min(r.retrain_seconds for r in runs):.0f}-{max(r.retrain_seconds for r in runs):.0f} s"
    )

    print()
    print(
        "calibration (ECE, 15 bins, in points, uncalibrated -> calibrated): the artifact's"
        " record is on its training data's test split (Amazon); tweets through the predict path"
    )
    print(f"{'model':<22} {'T':>6} {'record test ECE':>17} {'tweets test ECE':>17}")

    def row(name: str, record: dict[str, Any], tweets_ece: tuple[float, float]) -> None:
        before, after = record.get("test_ece_before"), record.get("test_ece_after")
        recorded = "-"
        if before is not None and after is not None:
            recorded = f"{before * 100:5.1f} -> {after * 100:5.1f}"
        print(
            f"{name:<22} {record.get('temperature', 1.0):6.3f} {recorded:>17}"
            f" {tweets_ece[0] * 100:5.1f} -> {tweets_ece[1] * 100:5.1f}"
        )

    row("v1", v1_calibration, (base.ece_raw, base.ece))
    for r in runs:
        row(f"seed {r.seed} {r.strategy} {r.version}", r.calibration, r.ece)
    lowered = [
        r.calibration["test_ece_after"] <= r.calibration["test_ece_before"]
        for r in runs
        if "test_ece_before" in r.calibration
    ]
    print(f"calibration lowered the record's test ECE in {sum(lowered)}/{len(lowered)} candidates")

    print()
    print("drift of v1's traffic against its training texts (GET /predict/drift):")
    for name, d in drifts.items():
        print(
            f"  {name:<12} {d.state:<8} score {d.score:.4f} (token divergence"
            f" {d.token_divergence:.4f}, confidence shift {d.confidence_shift:.4f}),"
            f" threshold {d.threshold:.2f}, window {d.window_size}, reference {d.reference_version}"
        )
    amazon, tweets = drifts["amazon test"], drifts["tweets test"]
    met = amazon.state == "ok" and tweets.state == "drifted"
    print(f"  target (tweets drifted, Amazon not): {'met' if met else 'missed'}")
    print()
    print("the gate's reasons:")
    for r in runs:
        print(f"  seed {r.seed} {r.strategy}: {r.reason}")


if __name__ == "__main__":
    main()
