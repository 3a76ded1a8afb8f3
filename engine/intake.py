"""What ``submit`` does to a valid task before it is written (docs/security.md):

1. budget: the tenant's daily budget, only when one is configured for it (``BudgetExceeded``);
2. template: ``params.template`` (+ ``template_version``, ``variables``) is rendered into the
   input; ``variables`` are dropped from the stored params (they may hold personal data);
3. sanitise: control, bidi and zero-width characters out, NFC, the request size limit;
4. PII: the tenant's policy — ``redact`` (placeholders in the event and the record, the
   mapping in its own key when the policy allows restoring), ``block`` (``PiiBlocked``) or
   ``off``;
5. callback URL: ``params.callback_url`` must be http(s) and not link-local/metadata (and not
   private or loopback unless allowed).

Every step is in-process except the budget read and a template fetch, which happen only when
the task (or tenant) uses them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine import redaction
from engine.budget import Budgets
from engine.errors import InvalidTask
from engine.events import ChatMessageIn
from engine.policy import LiveConfig
from engine.sanitize import Limits, clean_request
from engine.settings import Settings
from engine.task import TaskSpec
from engine.templates import TemplateError, TemplateStore
from engine.webhooks import UrlPolicy, validate_callback_url


@dataclass(frozen=True, slots=True)
class Admitted:
    spec: TaskSpec  # with the rendered, sanitised, redacted input
    pii_mapping: str  # JSON placeholder -> value, "" when nothing is to be restored
    callback_url: str  # "" when none


class Intake:
    """Applies budgets, templates, sanitising, the PII policy and callback checks."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.settings = settings
        self.live = LiveConfig.from_settings(redis, settings)
        self.budgets = Budgets(redis, settings.namespace, self.live.budgets)
        self.templates = TemplateStore(redis, settings.namespace)
        self.limits = Limits(settings.max_request_bytes, settings.max_result_bytes)
        self.urls = UrlPolicy(settings.webhook_allow_private, settings.webhook_allow_loopback)

    async def admit(self, spec: TaskSpec, *, resubmit: bool = False) -> Admitted:
        """The task as it may be stored; ``resubmit`` (a dead letter retried) skips the steps
        its stored form has been through already."""
        live = self.live
        await live.ensure_loaded()
        if live.budgets.budget(spec.tenant) is not None:
            self.budgets.config = live.budgets
            await self.budgets.check(spec.tenant)
        params = spec.params
        callback = params.get("callback_url")
        if callback is not None:
            if not isinstance(callback, str):
                raise InvalidTask("params.callback_url", "must be a string URL")
            validate_callback_url(callback, self.urls)
        if resubmit:
            return Admitted(spec, "", callback or "")
        update: dict[str, Any] = {}
        if "template" in params:
            update.update(await self._render(spec))
        texts = _texts(update.get("input", spec.input))
        cleaned = clean_request(texts, self.limits)
        if spec.kind != "chat" and not cleaned[0].strip():
            raise InvalidTask("input", "prompt is empty (after removing control characters)")
        screened = redaction.screen(cleaned, live.pii.for_tenant(spec.tenant))
        if list(screened.texts) != texts:
            update["input"] = _rebuild(update.get("input", spec.input), screened.texts)
        if update:
            spec = spec.model_copy(update=update)
        mapping = ""
        if screened.restorable and screened.mapping:
            mapping = orjson.dumps(dict(screened.mapping)).decode()
        return Admitted(spec, mapping, callback or "")

    async def _render(self, spec: TaskSpec) -> dict[str, Any]:
        params = dict(spec.params)
        name, version = params["template"], params.get("template_version")
        variables = params.pop("variables", {})
        if spec.kind == "chat":
            raise TemplateError("templates render text and image prompts, not chat messages")
        if not isinstance(name, str):
            raise TemplateError("params.template must be a template name")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise TemplateError("must be an integer version", "params.template_version")
        if not isinstance(variables, dict):
            raise TemplateError("must be an object of name -> value", "params.variables")
        text, used = await self.templates.render(name, variables, version)
        params["template_version"] = used
        return {"input": text, "params": params}

    def pii_ttl_s(self, deadline_ms: int) -> int:
        """How long a task's PII mapping lives: its deadline plus the retention of results."""
        left = max(0, deadline_ms - int(time.time() * 1000)) // 1000
        return int(left + self.settings.task_retention_s) + 60

    async def aclose(self) -> None:
        await self.live.aclose()


def _texts(value: str | list[ChatMessageIn]) -> list[str]:
    return [value] if isinstance(value, str) else [m.content for m in value]


def _rebuild(value: str | list[ChatMessageIn], texts: tuple[str, ...]) -> str | list[ChatMessageIn]:
    if isinstance(value, str):
        return texts[0]
    return [ChatMessageIn(role=m.role, content=t) for m, t in zip(value, texts, strict=True)]
