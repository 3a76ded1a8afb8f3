"""The producer API as the service ships it: ``Client.from_url(url)``, ``submit``, ``get``,
``cancel``, ``watch`` — the core client (``engine.core.client``) with the service's admission
steps (``engine.admission.steps``: budgets, templates, sanitising, the PII policy, callback
checks) wired in. This is the composition; the behaviour lives in those two modules."""

from __future__ import annotations

import redis.asyncio as aioredis

from engine.admission.steps import Admission
from engine.core import client as core
from engine.core.client import TaskView
from engine.runtime.connection import connect_for
from engine.settings import Settings

__all__ = ["Client", "TaskView"]


class Client(core.Client):
    """Submit and follow tasks. One per process is plenty; it is safe for concurrent use."""

    admission: Admission

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        super().__init__(redis, settings, Admission(redis, settings))

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> Client:
        settings = settings or Settings()
        return cls(connect_for(settings, url=url), settings)
