"""Training backends: one contract, run by a local subprocess here and by SageMaker
training jobs on AWS (issue #5). Both run the same sagemaker_scripts/train.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Protocol

from sentiloop.core.errors import FailedPrecondition, InvalidArgument
from sentiloop.core.objectstore import ObjectStore
from sentiloop.core.processes import dying_with_parent
from sentiloop.core.scripts import load_script, scripts_dir
from sentiloop.core.training import (
    Report,
    TrainingEvent,
    TrainingJob,
    artifact_key,
    looks_like_hub_id,
)

log = logging.getLogger("sentiloop.training")


class TrainingBackend(Protocol):
    name: str

    def estimated_time(self, preset: str) -> str:
        """How long a job of this preset takes, in words (the original API's estimated_time)."""
        ...

    def check_base_model(self, base_model: str) -> None:
        """Raises a domain error at once when a job could not load ``base_model``."""
        ...

    async def run(self, job: TrainingJob, report: Report) -> None:
        """Runs the job to its end, reporting as it goes."""
        ...

    async def stop(self, job_name: str) -> None: ...


class LocalTrainingBackend:
    """Runs train.py in a subprocess with SageMaker's environment contract: channels
    downloaded from the object store into input/data/<channel>, the model written to
    SM_MODEL_DIR, then packed as model.tar.gz into the object store."""

    name = "local"

    def __init__(self, store: ObjectStore, work_dir: Path) -> None:
        self._store = store
        self._work_dir = work_dir
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._stopped: set[str] = set()
        self._train = load_script("train")

    async def run(self, job: TrainingJob, report: Report) -> None:
        root = self._work_dir / job.name
        await report(TrainingEvent("status", status="Downloading"))
        try:
            paths = await asyncio.to_thread(self._prepare, job, root)
        except Exception as error:  # a missing or unreadable dataset ends the job, not us
            await report(TrainingEvent("failed", reason=f"could not prepare the job: {error}"))
            return
        env = {
            **os.environ,
            "SM_CHANNEL_TRAIN": str(paths["train"]),
            "SM_CHANNEL_VALIDATION": str(paths["validation"]),
            "SM_MODEL_DIR": str(paths["model"]),
            "SM_OUTPUT_DATA_DIR": str(paths["output"]),
            "SENTILOOP_HYPERPARAMETERS_FILE": str(paths["hyperparameters"]),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        if "test" in paths:
            env["SM_CHANNEL_TEST"] = str(paths["test"])
        if job.name in self._stopped:  # stopped while its data was being prepared
            self._stopped.discard(job.name)
            await report(TrainingEvent("failed", status="Stopped", reason="stopped on request"))
            return
        # Spawned from the event loop's (main) thread: the death signal is tied to the
        # spawning thread, so training never outlives this service.
        process = await asyncio.create_subprocess_exec(
            *dying_with_parent([sys.executable, str(scripts_dir() / "train.py")]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=root,
        )
        self._processes[job.name] = process
        if job.name in self._stopped:  # stopped while the process was being spawned
            process.send_signal(signal.SIGTERM)
        failure_reason = ""
        try:
            assert process.stdout is not None
            with (root / "train.log").open("ab") as log_file:

                def keep(line: bytes) -> None:
                    log_file.write(line)
                    log_file.flush()

                async for raw in process.stdout:
                    await asyncio.to_thread(keep, raw)  # disk writes stay off the event loop
                    parsed = self._train.parse_line(raw.decode("utf-8", errors="replace"))
                    if parsed is None:
                        continue
                    if parsed["kind"] == "progress":
                        progress = {k: parsed[k] for k in ("step", "total_steps", "epoch", "loss")}
                        await report(TrainingEvent("progress", progress=progress))
                    elif parsed["kind"] == "metric":
                        await report(
                            TrainingEvent("metric", name=parsed["name"], value=parsed["value"])
                        )
                    elif parsed["status"] == "Failed":
                        failure_reason = parsed.get("reason") or ""
                    else:
                        await report(TrainingEvent("status", status=parsed["status"]))
            code = await process.wait()
        except asyncio.CancelledError:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        finally:
            self._processes.pop(job.name, None)
        if job.name in self._stopped:
            self._stopped.discard(job.name)
            await report(TrainingEvent("failed", status="Stopped", reason="stopped on request"))
            return
        if code != 0:
            await report(TrainingEvent("failed", reason=self._failure(paths, code, failure_reason)))
            return
        metrics_file = paths["model"] / "metrics.json"
        if not metrics_file.is_file():
            await report(TrainingEvent("failed", reason="train.py exited without writing a model"))
            return
        metrics = json.loads(metrics_file.read_text())
        artifact = await asyncio.to_thread(self._upload, job.name, paths["model"])
        await report(TrainingEvent("completed", artifact=artifact, metrics=metrics))

    @staticmethod
    def check_base_model(base_model: str) -> None:
        folder = Path(base_model).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise InvalidArgument(
                    {"base_model": f"folder {base_model!r} holds no config.json: not a"
                     " Hugging Face model folder"}
                )  # fmt: skip
            return
        if looks_like_hub_id(base_model):
            raise FailedPrecondition(
                f"base_model {base_model!r} is not a local folder, and local training runs"
                " offline (HF_HUB_OFFLINE=1): give the folder of a downloaded model"
            )
        raise InvalidArgument({"base_model": f"no folder {base_model!r} on the training host"})

    @staticmethod
    def estimated_time(preset: str) -> str:
        # Measured on a 2-core CPU: MiniLM 2-5 minutes of training plus data and packing.
        return "under a minute" if preset == "tiny" else "3-6 minutes"

    async def stop(self, job_name: str) -> None:
        # Remembered even before the process exists: a stop that arrives while the job
        # downloads its data must not be lost (the job would train to the end).
        self._stopped.add(job_name)
        process = self._processes.get(job_name)
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)

    def _prepare(self, job: TrainingJob, root: Path) -> dict[str, Path]:
        if root.exists():  # a rerun after a restart starts clean
            shutil.rmtree(root)
        paths: dict[str, Path] = {
            "model": root / "model",
            "output": root / "output" / "data",
            "hyperparameters": root / "input" / "config" / "hyperparameters.json",
        }
        for path in (paths["model"], paths["output"], paths["hyperparameters"].parent):
            path.mkdir(parents=True, exist_ok=True)
        hyperparameters = dict(job.hyperparameters)
        init = hyperparameters.get("init_model_dir", "")
        if init and not Path(init).exists():
            # A model in the object store (s3://...): train.py reads local folders only.
            local = root / "input" / "init" / "model.tar.gz"
            self._store.download(self._store.key_of(init), local)
            hyperparameters["init_model_dir"] = str(local)
        paths["hyperparameters"].write_text(json.dumps(hyperparameters))
        for channel, prefix in job.channels.items():
            folder = root / "input" / "data" / channel
            keys = [k for k in self._store.list(prefix) if k.endswith(".csv")]
            if not keys:
                raise FileNotFoundError(f"channel {channel!r}: no CSV under {prefix!r}")
            for key in keys:
                self._store.download(key, folder / Path(key).name)
            paths[channel] = folder
        return paths

    def _failure(self, paths: dict[str, Path], code: int, reason: str) -> str:
        failure_file = paths["output"].parent / "failure"
        if not reason and failure_file.is_file():
            reason = (
                failure_file.read_text().strip().splitlines()[0]
                if failure_file.read_text().strip()
                else ""
            )
        if code < 0:
            name = signal.Signals(-code).name
            return f"training process was killed by {name}" + (f": {reason}" if reason else "")
        return reason or f"training process exited with code {code}"

    def _upload(self, job_name: str, model_dir: Path) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "model.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for item in sorted(model_dir.iterdir()):
                    tar.add(item, arcname=item.name)
            return self._store.put_file(artifact_key(job_name), archive)
