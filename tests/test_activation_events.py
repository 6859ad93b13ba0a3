"""InferenceService follows activations as events (model.activated), not by polling: with
the fallback poll set to ten minutes, every activation and rollback is served within
seconds, also after NotificationService was killed and restarted (the stream resumes)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import httpx
import pytest

from sentiloop.testing import TINY_ENV, RunningMesh, start_mesh, wait_for

NO_POLLING = {**TINY_ENV, "SENTILOOP_INFERENCE_FALLBACK_POLL_SECONDS": "600"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(tmp_path_factory.mktemp("activation"), extra_env=NO_POLLING)
    try:
        yield running
    finally:
        assert running.stop() == 0


def serving(client: httpx.Client) -> str:
    status = client.get("/predict/status").json()
    return str(status.get("model_version", "")) if status.get("status") == "InService" else ""


def test_activations_and_rollbacks_are_followed_as_events(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, timeout=60) as client:
        for version in ("v1", "v2"):
            started = client.post("/model-init/bootstrap?auto_deploy=true", json={})
            assert started.status_code == 200, started.text
            wait_for(lambda v=version: serving(client) == v, 120)  # type: ignore[misc]

        rolled = client.post("/models/rollback", json={"reason": "events test"})
        assert rolled.status_code == 200, rolled.text
        wait_for(lambda: serving(client) == "v1", 15)

        # NotificationService dies and comes back (the supervisor restarts it); the
        # follower subscribes again and the next activation is still served.
        os.kill(mesh.pid("notification"), signal.SIGKILL)
        wait_for(lambda: client.get("/events").status_code == 200, 60)
        activated = client.post("/models/v2/activate", json={"reason": "after the restart"})
        assert activated.status_code == 200, activated.text
        wait_for(lambda: serving(client) == "v2", 30)

        events = client.get("/events", params={"type_prefix": "model.activated"}).json()["events"]
        kinds = [(e["subject"], e["attributes"]["kind"]) for e in events]
        assert ("v1", "rollback") in kinds and ("v2", "activate") in kinds, kinds
