"""The registry's domain logic: the store is the source of truth; the SageMaker model
registry (when configured) mirrors it, and every change of the active version is published
as an event. No grpc here: the mirror and the event publisher are ports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from sentiloop.core.errors import FailedPrecondition
from sentiloop.core.serving import ServingState
from sentiloop.core.vocabulary import EndpointState, EventType
from sentiloop.data.shadow import ShadowReport, ShadowRule, shadow_problem
from sentiloop.registry.store import Activation, ModelRegistry, ModelVersion, NewModel

log = logging.getLogger("sentiloop.registry")


class Mirror(Protocol):
    """SageMaker's model package group, kept in step (blocking calls)."""

    def register(
        self, version: str, artifact: str, image: str, metrics: Any, gate_decision: str
    ) -> Any: ...
    def approve_active(self, version: str, reason: str) -> Any: ...


class Notify(Protocol):
    async def __call__(
        self, type: str, subject: str, message: str, **attributes: Any
    ) -> object: ...


class Registry:
    def __init__(
        self,
        store: ModelRegistry,
        notify: Notify,
        check_artifact: Callable[[str], None],
        mirror: Mirror | None = None,
        shadow_rule: ShadowRule | None = None,
    ) -> None:
        self._store = store
        # The promotion gate's shadow rule, applied when a version that shadowed live
        # traffic is activated (None: not applied).
        self._shadow_rule = shadow_rule
        self._notify = notify
        # Raises InvalidArgument unless the path is a safe, complete artifact in the object
        # store (core.artifacts.check_artifact): only those get a version.
        self._check_artifact = check_artifact
        self._mirror = mirror

    async def versions(self) -> list[ModelVersion]:
        return await asyncio.to_thread(self._store.versions)

    async def get(self, version: str) -> ModelVersion:
        return await asyncio.to_thread(self._store.get, version)

    async def endpoint_statuses(self, models: list[ModelVersion]) -> dict[str, str]:
        """The endpoint status of each active model in ``models``, from the latest
        ``serving.changed`` event the registry kept (Unknown before the first one)."""
        active = [m.version for m in models if m.is_active]
        if not active:
            return {}
        kept = await asyncio.to_thread(self._store.serving)
        if kept is None:
            return {version: EndpointState.UNKNOWN for version in active}
        return {version: kept[0].endpoint_status_of(version) for version in active}

    async def serving_changed(self, state: ServingState, event_id: int) -> None:
        if not await asyncio.to_thread(self._store.record_serving, state, event_id):
            return
        log.info("serving: %s", state.describe(), extra={"fields": {"event_id": event_id}})
        if state.status == EndpointState.FAILED and state.model_version:
            await self._revert(state)

    async def _revert(self, state: ServingState) -> None:
        """The active version failed to load while the previous one still answers: the
        registry goes back to the answering one, so that it, /predict/status and the
        endpoint status agree, and says so (model.activation_failed)."""
        failed, answering = state.target_version, state.model_version
        reason = f"{failed} failed to load: {state.failure_reason}"
        model = await asyncio.to_thread(self._store.revert_failed, failed, answering, reason)
        if model is None:
            return
        log.warning("%s; %s stays active", reason, answering)
        await self._approve(model.version, reason)
        await self._activated(model, failed, "reverted", reason)
        await self._notify(
            EventType.MODEL_ACTIVATION_FAILED,
            failed,
            f"{reason}; {answering} stays active",
            failed_version=failed,
            active_version=answering,
            reason=state.failure_reason,
        )

    async def last_serving_event(self) -> int:
        kept = await asyncio.to_thread(self._store.serving)
        return kept[1] if kept else 0

    async def activations(self) -> list[Activation]:
        return await asyncio.to_thread(self._store.activations)

    async def register(self, new: NewModel) -> ModelVersion:
        if new.path.strip():  # an empty one is the store's to name, with the other fields
            await asyncio.to_thread(self._check_artifact, new.path)
        model = await asyncio.to_thread(self._store.register, new)
        if self._mirror is not None:
            # The mirror failing never fails the registration: the store is the truth.
            try:
                await asyncio.to_thread(
                    self._mirror.register,
                    model.version,
                    model.path,
                    "",
                    model.test_metrics,
                    str(model.gate.get("decision", "")),
                )
            except Exception:
                log.exception("mirroring %s to the SageMaker model registry failed", model.version)
        return model

    async def activate(
        self, version: str, reason: str, force: bool = False
    ) -> tuple[ModelVersion, str]:
        """Refused (unless ``force``) when the version's shadow report shows it less
        accurate than the served model on enough labelled live traffic: the gate's shadow
        rule, which a version promoted after the gate (a rejected candidate that shadowed,
        one registered without activation) would otherwise never meet."""
        kind = "activate"
        problem = self._shadow_problem(await self.get(version))
        if problem is not None:
            if not force:
                raise FailedPrecondition(f"{problem}; activate with force to promote it anyway")
            kind = "forced"
            reason = f"{reason}; " if reason else ""
            reason += f"forced despite: {problem}"
        model, previous = await asyncio.to_thread(self._store.activate, version, reason, kind)
        await self._approve(model.version, reason or "activated")
        await self._activated(model, previous, kind, reason)
        return model, previous

    def _shadow_problem(self, model: ModelVersion) -> str | None:
        if self._shadow_rule is None or not model.shadow or model.is_active:
            return None
        rule = self._shadow_rule
        return shadow_problem(
            ShadowReport.from_dict(model.shadow), rule.tolerance, rule.min_labelled
        )

    async def record_shadow(self, version: str, report: ShadowReport) -> ModelVersion:
        return await asyncio.to_thread(self._store.record_shadow, version, report.as_dict())

    async def rollback(self, reason: str) -> tuple[ModelVersion, str]:
        model, rolled_back = await asyncio.to_thread(self._store.rollback, reason)
        await self._approve(model.version, reason or f"rolled back from {rolled_back}")
        await self._activated(model, rolled_back, "rollback", reason)
        await self._notify(
            EventType.MODEL_ROLLED_BACK,
            model.version,
            f"rolled back from {rolled_back} to {model.version}",
            rolled_back_version=rolled_back,
            reason=reason,
        )
        return model, rolled_back

    async def _approve(self, version: str, reason: str) -> None:
        if self._mirror is None:
            return
        try:
            await asyncio.to_thread(self._mirror.approve_active, version, reason[:1000])
        except Exception:
            log.exception("approving %s in the SageMaker model registry failed", version)

    async def _activated(self, model: ModelVersion, previous: str, kind: str, reason: str) -> None:
        await self._notify(
            EventType.MODEL_ACTIVATED,
            model.version,
            f"{model.version} is the active version (was {previous or 'none'})",
            version=model.version,
            path=model.path,
            previous_version=previous,
            kind=kind,
            reason=reason,
        )
