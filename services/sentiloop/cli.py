"""The `sentiloop` command: runs the mesh, and talks to it over gRPC through Envoy."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from sentiloop.core.config import load_settings
from sentiloop.core.vocabulary import EndpointState


def _envoy_address(args: argparse.Namespace) -> str:
    return str(args.address or f"127.0.0.1:{load_settings().envoy_port}")


def _grpc_call(args: argparse.Namespace, call: Callable[[Any], Any]) -> Any:
    import grpc

    from sentiloop.core.auth import bearer_channel, operator_token

    # The operator credential: SENTILOOP_OPERATOR_TOKEN, else the mesh's token file.
    token = operator_token(load_settings())
    channel_to = bearer_channel if token else lambda address, _: grpc.insecure_channel(address)
    with channel_to(_envoy_address(args), token) as channel:
        try:
            return call(channel)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            raise SystemExit(1) from None


def _print_message(message: Any) -> None:
    from google.protobuf import json_format

    print(
        json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2)
    )


def _cmd_up(args: argparse.Namespace) -> int:
    import os

    from sentiloop.aws.config import AWS_BACKENDS
    from sentiloop.core.supervisor import run_mesh

    environ = dict(os.environ)
    if args.backend == "aws":
        # A variable the user set still wins over what the flag selects.
        environ = {**AWS_BACKENDS, **{k: v for k, v in environ.items() if v.strip()}}
    return run_mesh(
        load_settings(environ),
        startup_timeout=args.timeout,
        bootstrap_if_empty=args.bootstrap_if_empty,
    )


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


def _cmd_config(args: argparse.Namespace) -> int:
    from sentiloop.core.config import settings_table, variable_of

    if args.markdown:
        sys.stdout.write(settings_table())
        return 0
    settings = load_settings()  # checks the environment: a bad value exits here, named
    for name, value in settings.model_dump().items():
        shown = ",".join(value) if isinstance(value, tuple) else value
        print(f"{variable_of(name)}={'' if shown is None else shown}")
    return 0


def watch_job(channel: Any, job_name: str, show: Callable[[str], None] = print) -> Any:
    """Follows a training job's status stream with a progress bar; returns the last update."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sentiloop.v1 import model_init_pb2, model_init_pb2_grpc

    stub = model_init_pb2_grpc.ModelInitServiceStub(channel)
    last = None
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task(job_name, total=None, detail="")
        for update in stub.WatchTrainingJob(
            model_init_pb2.WatchTrainingJobRequest(job_name=job_name)
        ):
            last = update
            job = update.job
            total = job.progress.total_steps or None
            detail = job.secondary_status or job.status
            if job.progress.step:
                detail += f"  loss {job.progress.loss:.4f}"
            progress.update(task, total=total, completed=job.progress.step, detail=detail)
    if last is not None:
        job = last.job
        show(
            f"{job.job_name}: {job.status}"
            + (f" ({job.failure_reason})" if job.failure_reason else "")
        )
        if last.test_metrics.ByteSize():
            m = last.test_metrics
            show(f"test accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}")
    return last


def wait_for_endpoint(channel: Any, timeout: float = 600.0) -> int:
    import time

    from sentiloop.v1 import model_init_pb2, model_init_pb2_grpc

    stub = model_init_pb2_grpc.ModelInitServiceStub(channel)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = stub.GetEndpointStatus(model_init_pb2.GetEndpointStatusRequest())
        if status.status == EndpointState.IN_SERVICE and status.model_version:
            print(f"deployed: model {status.model_version} is in service")
            return 0
        if status.status == "Failed":
            break
        time.sleep(0.5)
    print(f"the endpoint is not in service: {status}", file=sys.stderr)
    return 1


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from sentiloop.v1 import model_init_pb2, model_init_pb2_grpc

    def call(channel: Any) -> int:
        stub = model_init_pb2_grpc.ModelInitServiceStub(channel)
        if args.if_empty:
            endpoint = stub.GetEndpointStatus(model_init_pb2.GetEndpointStatusRequest())
            if endpoint.model_version:
                print(f"model {endpoint.model_version} is deployed ({endpoint.status})")
                return 0
            jobs = stub.ListTrainingJobs(model_init_pb2.ListTrainingJobsRequest(page_size=20))
            running = [
                j
                for j in jobs.jobs
                if j.status == "InProgress" or (j.status == "Completed" and j.auto_deploy)
            ]
            if running:
                print(f"training job {running[0].job_name} is on its way to deployment")
                last = watch_job(channel, running[0].job_name) if args.watch else None
                return 0 if last is None or last.job.status == "Completed" else 1
        answer = stub.Bootstrap(
            model_init_pb2.BootstrapRequest(
                auto_deploy=args.auto_deploy,
                preset=args.preset or "",
                dataset=args.dataset or "",
                base_model=args.base_model or "",
                hyperparameters=_pairs(args.hyperparameter),
            )
        )
        print(f"{answer.message} (dataset {answer.dataset_id[:12]})")
        if args.watch:
            last = watch_job(channel, answer.job_name)
            if last is None or last.job.status != "Completed":
                return 1
            if args.auto_deploy:
                return wait_for_endpoint(channel)
        return 0

    return int(_grpc_call(args, call))


def _pairs(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise SystemExit(f"error: {item!r} is not NAME=VALUE")
        pairs[name] = value
    return pairs


UPLOAD_CHUNK = 1 << 20  # gRPC's default message limit is 4 MiB


def _upload_requests(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from sentiloop.v1 import model_init_pb2

    files = {"train": args.file, "validation": args.validation, "test": args.test}
    name = args.name or Path(args.file).stem
    for channel, path in files.items():
        if not path:
            continue
        with open(path, "rb") as handle:
            # The first message goes even for an empty file, so the service names the problem.
            chunk = handle.read(UPLOAD_CHUNK)
            yield model_init_pb2.UploadDatasetRequest(
                name=name, channel=channel, filename=Path(path).name, chunk=chunk
            )
            while chunk := handle.read(UPLOAD_CHUNK):
                yield model_init_pb2.UploadDatasetRequest(channel=channel, chunk=chunk)


def _show_dataset(dataset: Any, created: bool | None = None) -> None:
    state = "" if created is None else (" (new)" if created else " (imported before)")
    print(f"dataset {dataset.dataset_id}{state}")
    print(f"  name {dataset.name!r}, {dataset.kind}, from {dataset.source}")
    for channel in ("train", "validation", "test"):
        c = dataset.counts[channel]
        print(
            f"  {channel:<10} {c.total:>6}  negative {c.negative}, neutral {c.neutral},"
            f" positive {c.positive}"
        )
    if dataset.split:
        print(f"  split: {dataset.split}")
    for channel, found in dataset.files.items():
        print(
            f"  {channel} file: {found.rows_read} rows read, {found.duplicates_collapsed}"
            f" duplicates collapsed, {found.conflicting_texts} texts with conflicting labels"
        )
        for conflict in found.conflicts:
            print(f"    {conflict}")


def _cmd_dataset(args: argparse.Namespace) -> int:
    from sentiloop.v1 import model_init_pb2 as pb
    from sentiloop.v1 import model_init_pb2_grpc

    def call(channel: Any) -> int:
        stub = model_init_pb2_grpc.ModelInitServiceStub(channel)
        if args.action == "list":
            for dataset in stub.ListDatasets(pb.ListDatasetsRequest()).datasets:
                total = sum(c.total for c in dataset.counts.values())
                print(f"{dataset.dataset_id[:12]}  {dataset.kind:<8} {total:>7}  {dataset.name}")
            return 0
        if args.action == "show":
            _show_dataset(stub.GetDataset(pb.GetDatasetRequest(dataset_id=args.file)).dataset)
            return 0
        if "://" in args.file:  # read by the service, where the object store is
            request = pb.ImportDatasetRequest(
                name=args.name or "", train=pb.DatasetFile(uri=args.file)
            )
            for channel in ("validation", "test"):
                if getattr(args, channel):
                    getattr(request, channel).uri = getattr(args, channel)
            answer = stub.ImportDataset(request, timeout=600)
        else:
            answer = stub.UploadDataset(_upload_requests(args), timeout=600)
        _show_dataset(answer.dataset, answer.created)
        return 0

    return int(_grpc_call(args, call))


def _cmd_status(args: argparse.Namespace) -> int:
    from sentiloop.v1 import model_init_pb2, model_init_pb2_grpc

    if args.watch:
        last = _grpc_call(args, lambda channel: watch_job(channel, args.job_name))
        return 0 if last is not None and last.job.status == "Completed" else 1
    answer = _grpc_call(
        args,
        lambda channel: model_init_pb2_grpc.ModelInitServiceStub(channel).GetTrainingStatus(
            model_init_pb2.GetTrainingStatusRequest(job_name=args.job_name)
        ),
    )
    _print_message(answer.job)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from sentiloop.v1 import model_init_pb2, model_init_pb2_grpc

    answer = _grpc_call(
        args,
        lambda channel: model_init_pb2_grpc.ModelInitServiceStub(channel).Deploy(
            model_init_pb2.DeployRequest(job_name=args.job_name)
        ),
    )
    print(answer.message)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from sentiloop.v1 import inference_pb2, inference_pb2_grpc

    answer = _grpc_call(
        args,
        lambda channel: inference_pb2_grpc.InferenceServiceStub(channel).PredictBatch(
            inference_pb2.PredictBatchRequest(texts=args.texts)
        ),
    )
    for prediction in answer.predictions:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(prediction.scores.items()))
        print(f"{prediction.label:<8} {prediction.confidence:.3f}  {prediction.text}")
        print(
            f"         model {prediction.model_version}, id {prediction.prediction_id} ({scores})"
        )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from sentiloop.v1 import registry_pb2, registry_pb2_grpc

    answer = _grpc_call(
        args,
        lambda channel: registry_pb2_grpc.ModelRegistryServiceStub(channel).ListModels(
            registry_pb2.ListModelsRequest()
        ),
    )
    if not answer.models:
        print("no model versions yet (sentiloop bootstrap --auto-deploy --watch)")
    for model in answer.models:
        marker = "*" if model.is_active else " "
        print(
            f"{marker} {model.version:<5} {model.status:<10} accuracy {model.accuracy:.4f}"
            f"  macro-F1 {model.test_metrics.macro_f1:.4f}  {model.source:<10}"
            f" {model.training_job_name}"
            + (f"  [{model.endpoint_status}]" if model.is_active else "")
        )
    return 0


def _cmd_endpoint(args: argparse.Namespace) -> int:
    from sentiloop.v1 import model_init_pb2, model_init_pb2_grpc

    answer = _grpc_call(
        args,
        lambda channel: model_init_pb2_grpc.ModelInitServiceStub(channel).GetEndpointStatus(
            model_init_pb2.GetEndpointStatusRequest()
        ),
    )
    _print_message(answer)
    return 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    from sentiloop.v1 import feedback_pb2, feedback_pb2_grpc

    if args.stats:
        answer = _grpc_call(
            args,
            lambda channel: feedback_pb2_grpc.FeedbackServiceStub(channel).GetFeedbackStats(
                feedback_pb2.GetFeedbackStatsRequest()
            ),
        )
        _print_message(answer)
        return 0
    if not args.label or not (args.text or args.prediction_id):
        print("error: give --label and either a text or --prediction-id", file=sys.stderr)
        return 2
    answer = _grpc_call(
        args,
        lambda channel: feedback_pb2_grpc.FeedbackServiceStub(channel).SubmitFeedback(
            feedback_pb2.SubmitFeedbackRequest(
                text=args.text or "",
                user_label=args.label,
                model_prediction=args.model_prediction or "",
                prediction_id=args.prediction_id or "",
            )
        ),
    )
    print(
        f"{answer.message}: #{answer.feedback.id} {answer.feedback.user_label} "
        f"{answer.feedback.text!r}"
    )
    return 0


def _print_gate(gate: Any) -> None:
    if not gate.decision:
        return
    print(f"gate: {gate.decision} against {gate.baseline_version or 'no model'}: {gate.reason}")
    for comparison in (gate.test, gate.feedback):
        if comparison.samples:
            scored = f"out of fold, {comparison.folds} folds" if comparison.folds else "held out"
            print(
                f"  {comparison.data_set:<8} {comparison.samples:>5} samples ({scored})  macro-F1"
                f" {comparison.baseline_macro_f1:.4f} -> {comparison.candidate_macro_f1:.4f}"
                f" ({comparison.delta_macro_f1 * 100:+.1f} points, at least"
                f" {comparison.delta_macro_f1_lower_bound * 100:+.1f} with 95% confidence),"
                f" accuracy {comparison.baseline_accuracy:.4f} ->"
                f" {comparison.candidate_accuracy:.4f}"
                + (
                    f", ECE {comparison.baseline_ece:.4f} -> {comparison.candidate_ece:.4f}"
                    if comparison.HasField("candidate_ece")
                    else ""
                )
            )


def _cmd_retrain(args: argparse.Namespace) -> int:
    import time

    from sentiloop.v1 import registry_pb2, registry_pb2_grpc, retraining_pb2, retraining_pb2_grpc

    def call(channel: Any) -> int:
        stub = retraining_pb2_grpc.RetrainingServiceStub(channel)
        request = retraining_pb2.RetrainRequest(
            return_immediately=args.watch, force_promotion=args.force, recipe=args.recipe or ""
        )
        answer = stub.Retrain(request)
        print(answer.message)
        if args.watch:
            last = watch_job(channel, answer.training_job_name)
            if last is None or last.job.status != "Completed":
                return 1
            print("comparing the candidate with the active model ...")
            while stub.GetPolicy(retraining_pb2.GetPolicyRequest()).running_job_name:
                time.sleep(1)
            models = registry_pb2_grpc.ModelRegistryServiceStub(channel).ListModels(
                registry_pb2.ListModelsRequest()
            )
            for model in models.models:
                if model.training_job_name == answer.training_job_name:
                    print(f"candidate registered as {model.version} ({model.status})")
                    _print_gate(model.gate)
                    return 0
            print("the run ended without registering a candidate", file=sys.stderr)
            return 1
        _print_gate(answer.gate)
        return 0

    return int(_grpc_call(args, call))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from sentiloop.v1 import evaluation_pb2, evaluation_pb2_grpc

    answer = _grpc_call(
        args,
        lambda channel: evaluation_pb2_grpc.EvaluationServiceStub(channel).Evaluate(
            evaluation_pb2.EvaluateRequest(model_version=args.version or "")
        ),
    )
    print(f"model {answer.model_version}")
    for name, m in (("feedback", answer.feedback_metrics), ("test set", answer.test_metrics)):
        calibration = f"  ECE {m.ece:.4f}  Brier {m.brier:.4f}" if m.HasField("ece") else ""
        print(
            f"  {name:<9} {m.total_samples:>5} samples  accuracy {m.accuracy:.4f}"
            f"  macro-F1 {m.macro_f1:.4f}{calibration}"
        )
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    from sentiloop.v1 import notification_pb2, notification_pb2_grpc

    def show(event: Any) -> None:
        stamp = event.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp}  #{event.id:<5} {event.type:<22} {event.subject}  {event.message}")
        sys.stdout.flush()

    def call(channel: Any) -> int:
        stub = notification_pb2_grpc.NotificationServiceStub(channel)
        if args.follow:
            prefixes = [args.type] if args.type else []
            request = notification_pb2.SubscribeRequest(type_prefixes=prefixes, after_id=-1)
            for response in stub.Subscribe(request):
                show(response.event)
            return 0
        listed = stub.ListEvents(
            notification_pb2.ListEventsRequest(type_prefix=args.type or "", page_size=args.limit)
        )
        for event in reversed(listed.events):
            show(event)
        return 0

    try:
        return int(_grpc_call(args, call))
    except KeyboardInterrupt:
        return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from sentiloop.v1 import registry_pb2, registry_pb2_grpc

    answer = _grpc_call(
        args,
        lambda channel: registry_pb2_grpc.ModelRegistryServiceStub(channel).Rollback(
            registry_pb2.RollbackRequest(reason=args.reason or "rolled back with the CLI")
        ),
    )
    print(f"rolled back from {answer.rolled_back_version} to {answer.model.version}")
    return 0


def _metadata_files() -> list[Any]:
    """Every service's SQLite file and the migrations its stores apply to it, in their
    order (each servicer's create_app opens the same)."""
    from sentiloop.core.db_copy import StoreFile
    from sentiloop.evaluation import evaluator, reports
    from sentiloop.feedback import export
    from sentiloop.feedback import store as feedback
    from sentiloop.inference import drift, engine, shadow
    from sentiloop.model_init import jobs
    from sentiloop.notification import events
    from sentiloop.registry import store as registry
    from sentiloop.retraining import runs

    return [
        StoreFile("registry", "registry.db", [("registry", registry.MIGRATIONS)]),
        StoreFile("model_init", "jobs.db", [("model_init", jobs.MIGRATIONS)]),
        StoreFile(
            "feedback",
            "feedback.db",
            [("feedback", feedback.MIGRATIONS), ("feedback_export", export.MIGRATIONS)],
        ),
        StoreFile(
            "inference",
            "predictions.db",
            [("predictions", engine.PREDICTIONS_MIGRATIONS), ("shadow", shadow.SHADOW_MIGRATIONS)],
        ),
        StoreFile("inference", "drift.db", [("drift", drift.CROSSINGS_MIGRATIONS)]),
        StoreFile("retraining", "runs.db", [("runs", runs.MIGRATIONS)]),
        StoreFile("notification", "events.db", [("events", events.MIGRATIONS)]),
        StoreFile("evaluation", "scores.db", [("scores", evaluator.MIGRATIONS)]),
        StoreFile("evaluation", "evaluations.db", [("evaluations", reports.MIGRATIONS)]),
    ]


def _cmd_db(args: argparse.Namespace) -> int:
    import os

    from sentiloop.core.db_copy import CopyRefused, copy_to_postgres
    from sentiloop.core.errors import SentiloopError

    environ = dict(os.environ)
    if args.data_dir:
        environ["SENTILOOP_DATA_DIR"] = args.data_dir
    try:
        copy_to_postgres(load_settings(environ), _metadata_files())
    except CopyRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    except SentiloopError as error:  # unreachable, or a schema newer than this release
        # Each file is copied in one transaction: the ones before it may be in.
        print(f"error: {error} (copy again into a new, empty database)", file=sys.stderr)
        return 1
    print(
        "The model artifacts and datasets are not in the database: with the local object"
        " store, the services must find DATA_DIR/objects at the same path as before (keep"
        " the data directory, or link or mount it there); see the README."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentiloop",
        description="Sentiloop: sentiment analysis that improves itself from feedback.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> Any:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    def with_address(sub: Any) -> Any:
        sub.add_argument(
            "--address", help="Envoy's gRPC address (default 127.0.0.1:$SENTILOOP_ENVOY_PORT)"
        )
        return sub

    up = command("up", "start every service and Envoy; Ctrl-C stops them", _cmd_up)
    up.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the mesh to be healthy"
    )
    up.add_argument(
        "--backend",
        choices=["local", "aws"],
        default="local",
        help="aws: S3, SageMaker training and endpoint (see the README's AWS section)",
    )
    up.add_argument(
        "--bootstrap-if-empty",
        action="store_true",
        help="when no model is deployed, train and deploy one (what `make run` does)",
    )

    health = command("health", "show the health of every service", _cmd_health)
    health.add_argument(
        "--url", help="Envoy's URL (default http://127.0.0.1:$SENTILOOP_ENVOY_PORT)"
    )

    command("envoy-config", "print the Envoy configuration", _cmd_envoy_config)
    config = command(
        "config", "check the configuration and print every setting's value", _cmd_config
    )
    config.add_argument(
        "--markdown", action="store_true", help="print the README's tables of every setting"
    )

    bootstrap = with_address(command("bootstrap", "train a first model", _cmd_bootstrap))
    bootstrap.add_argument("--auto-deploy", action="store_true", help="deploy when trained")
    bootstrap.add_argument("--watch", action="store_true", help="show progress until it ends")
    bootstrap.add_argument("--preset", choices=["minilm", "tiny"], help="model preset")
    bootstrap.add_argument(
        "--dataset", help="dataset id (sentiloop dataset list), or an s3:// URI to import first"
    )
    bootstrap.add_argument("--base-model", help="model folder (or hub id) to fine-tune")
    bootstrap.add_argument(
        "--hyperparameter",
        "-H",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a train.py hyperparameter, e.g. -H epochs=3 (repeatable)",
    )
    bootstrap.add_argument(
        "--if-empty",
        action="store_true",
        help="only when no model is deployed and none is on its way",
    )

    dataset = with_address(
        command("dataset", "import, list or show labelled datasets", _cmd_dataset)
    )
    dataset.add_argument("action", choices=["import", "list", "show"])
    dataset.add_argument(
        "file",
        nargs="?",
        help="import: a CSV (text,label) or JSON Lines file, or an s3:// URI; show: dataset id",
    )
    dataset.add_argument("--name", help="a name for people (default: the file's name)")
    dataset.add_argument("--validation", help="a validation file (default: split from FILE)")
    dataset.add_argument("--test", help="a test file (default: split from FILE)")

    status = with_address(command("status", "show a training job", _cmd_status))
    status.add_argument("job_name")
    status.add_argument("--watch", action="store_true", help="follow it until it ends")

    deploy = with_address(command("deploy", "deploy a completed training job", _cmd_deploy))
    deploy.add_argument("job_name")

    predict = with_address(command("predict", "predict the sentiment of texts", _cmd_predict))
    predict.add_argument("texts", nargs="+", metavar="text")

    with_address(command("models", "list model versions", _cmd_models))

    feedback = with_address(command("feedback", "say what the right label was", _cmd_feedback))
    feedback.add_argument("text", nargs="?", help="the text (or use --prediction-id)")
    feedback.add_argument("--label", help="the right label: positive, negative or neutral")
    feedback.add_argument("--prediction-id", help="the prediction the feedback is about")
    feedback.add_argument("--model-prediction", help="what the model said (with a text)")
    feedback.add_argument("--stats", action="store_true", help="show feedback counts instead")

    retrain = with_address(command("retrain", "retrain on the feedback so far", _cmd_retrain))
    retrain.add_argument("--watch", action="store_true", help="show progress, then the verdict")
    retrain.add_argument("--force", action="store_true", help="promote even if the gate says no")
    retrain.add_argument("--recipe", choices=["default", "naive"], help="training recipe")

    evaluate = with_address(
        command("evaluate", "score a model on feedback and test", _cmd_evaluate)
    )
    evaluate.add_argument("--version", help="model version (default: the active one)")

    events = with_address(command("events", "show the event log", _cmd_events))
    events.add_argument("--follow", action="store_true", help="keep streaming new events")
    events.add_argument("--type", help="only events whose type starts with this")
    events.add_argument("--limit", type=int, default=50, help="how many (without --follow)")

    rollback = with_address(command("rollback", "return to the previous model", _cmd_rollback))
    rollback.add_argument("--reason")
    with_address(command("endpoint", "show the endpoint's status", _cmd_endpoint))

    db = command(
        "db",
        "copy the SQLite metadata into the PostgreSQL database SENTILOOP_DATABASE_URL names"
        " (stop the mesh first)",
        _cmd_db,
    )
    db.add_argument("action", choices=["copy"])
    db.add_argument("--data-dir", help="the data directory (default $SENTILOOP_DATA_DIR)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "dataset" and args.action != "list" and not args.file:
        parser.error(f"sentiloop dataset {args.action} needs a file or dataset id")
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
