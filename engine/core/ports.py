"""What the core asks of the parts around it, as protocols: the core calls these and imports
none of their implementations (``engine.admission`` provides both; the composition roots,
``engine.client`` and ``engine.runtime.workers``, wire them in).

- ``Admission``: what ``Client.submit`` applies to a valid task before it is written (budgets,
  templates, sanitising, the PII policy, callback checks) and, on the way back, the PII restore
  of a result for its caller.
- ``ResultStage``: what the worker does with a successful result before it commits it (the
  result cache, cleaning, storing large texts out of line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.core.outbox import Running
    from engine.core.task import TaskSpec
    from providers.types import ProviderRequest


@dataclass(frozen=True, slots=True)
class Admitted:
    spec: TaskSpec  # with the rendered, sanitised, redacted input
    pii_mapping: str  # JSON placeholder -> value, "" when nothing is to be restored
    callback_url: str  # "" when none


class Limits(Protocol):
    """The deployment's limits the client checks a task against."""

    @property
    def max_prompt_chars(self) -> int: ...
    @property
    def max_params_bytes(self) -> int: ...
    @property
    def queue_max_depth(self) -> int: ...


class Admission(Protocol):
    @property
    def limits(self) -> Limits: ...

    async def ensure_loaded(self) -> None:
        """The deployment's live configuration, loaded once before the first submit."""

    async def admit(self, spec: TaskSpec, *, resubmit: bool = False) -> Admitted:
        """The task as it may be stored, or ``InvalidTask`` (and its kinds)."""

    async def reserve(self, spec: TaskSpec, task_id: str) -> bool:
        """Hold the task's estimated cost; False when its tenant has no budget."""

    async def release(self, tenant: str, task_id: str) -> None:
        """Give back a reservation of a task that was not queued."""

    def pii_ttl_s(self, deadline_ms: int) -> int:
        """How long the task's PII mapping is kept."""

    async def restore(self, tag: str, task_id: str, text: str) -> str:
        """``text`` with the task's PII placeholders restored, when a mapping was kept."""

    async def aclose(self) -> None: ...


class ResultStage(Protocol):
    def cache_key(self, run: Running, request: ProviderRequest) -> str | None:
        """The cache key of the request, None when it is not to be cached."""

    async def cached(self, run: Running, key: str, started: float) -> dict[str, Any] | None:
        """``TaskSucceeded`` data of a cached result, if any."""

    async def finish(
        self, run: Running, data: dict[str, Any], text: str | None, cache_key: str | None
    ) -> None:
        """Clean ``text``, store it (out of line when large) into ``data``, cache it."""
