"""What ``submit`` does to a valid task before it is written (docs/security.md):

1. budget: the tenant's daily budget, only when one is configured for it — ``reserve``
   (called by the client once the task has its id) holds the task's estimated cost until its
   terminal event settles it, or refuses (``BudgetExceeded``; see ``engine.admission.budget``);
2. template: ``params.template`` (+ ``template_version``, ``variables``) is rendered into the
   input; ``variables`` are dropped from the stored params (they may hold personal data);
3. sanitise: control, bidi and zero-width characters out, NFC, the request size limit;
4. PII: the tenant's policy over every free-text field that is sent or stored — the input,
   ``params.system``, each ``params.stop`` and every string inside ``x_*`` params — ``redact``
   (placeholders in the event and the record, one mapping for the whole request, kept in its
   own key when the policy allows restoring), ``block`` (``PiiBlocked`` naming the field) or
   ``off``; the idempotency key is stored only as a hash (it still deduplicates);
5. callback URL: ``params.callback_url`` must be http(s) and not link-local/metadata (and not
   private or loopback unless allowed).

Every step is in-process except the budget reservation and a template fetch, which happen only
when the task (or tenant) uses them.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.admission import redaction
from engine.admission.budget import Budgets, estimate_usd
from engine.admission.callbacks import UrlPolicy, validate_callback_url
from engine.admission.pii import detect
from engine.admission.pii_vault import PiiVault
from engine.admission.policy import DeploymentLimits, LiveConfig
from engine.admission.sanitize import Limits, clean_request
from engine.admission.templates import TemplateStore
from engine.core.events import ChatMessageIn
from engine.core.params import EXTENSION_PREFIX
from engine.core.ports import Admitted
from engine.core.task import TaskSpec, check_sizes
from engine.errors import InvalidTask, PiiBlocked, TemplateError
from engine.settings import Settings

SCREENED_PARAMS = frozenset({"system", "stop"})  # free text sent to providers (+ every x_*)


class Admission:
    """Applies budgets, templates, sanitising, the PII policy and callback checks (the
    service's ``engine.core.ports.Admission``)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.settings = settings
        self.live = LiveConfig.from_settings(redis, settings)
        self.budgets = Budgets(redis, settings.namespace, self.live.budgets)
        self.templates = TemplateStore(redis, settings.namespace)
        self.sizes = Limits(settings.max_request_bytes, settings.max_result_bytes)
        self.vault = PiiVault(redis)
        self.urls = UrlPolicy(settings.webhook_allow_private, settings.webhook_allow_loopback)

    async def admit(self, spec: TaskSpec, *, resubmit: bool = False) -> Admitted:
        """The task as it may be stored; ``resubmit`` (a dead letter retried) skips the steps
        its stored form has been through already."""
        live = self.live
        await live.ensure_loaded()
        lim, mine = live.limits, self.settings
        if (
            lim.max_prompt_chars < mine.max_prompt_chars
            or lim.max_params_bytes < mine.max_params_bytes
        ):
            check_sizes(spec, lim)  # validated against this process's larger limits (gateway)
        if self.sizes.request_bytes != live.limits.max_request_bytes:
            self.sizes = Limits(live.limits.max_request_bytes, self.settings.max_result_bytes)
        params = spec.params
        callback = params.get("callback_url")
        if callback is not None:
            if not isinstance(callback, str):
                raise InvalidTask("params.callback_url", "must be a string URL")
            validate_callback_url(callback, self.urls)
        if spec.idempotency_key is not None:
            spec = spec.model_copy(
                update={"idempotency_key": hash_key(spec.tenant, spec.idempotency_key)}
            )
        if resubmit:
            return Admitted(spec, "", callback or "")
        update: dict[str, Any] = {}
        if "template" in params:
            update.update(await self._render(spec))
        texts = _texts(update.get("input", spec.input))
        cleaned = clean_request(texts, self.sizes)
        if spec.kind != "chat" and not cleaned[0].strip():
            raise InvalidTask("input", "prompt is empty (after removing control characters)")
        params = update.get("params", spec.params)
        fields = _param_texts(params) if params else []
        policy = live.pii.for_tenant(spec.tenant)
        try:
            screened = redaction.screen(
                [*cleaned, *(t for _, t in fields)] if fields else cleaned, policy
            )
        except PiiBlocked as exc:
            raise PiiBlocked(exc.categories, _blocked_field(cleaned, fields)) from None
        n = len(cleaned)
        if list(screened.texts[:n]) != texts:
            update["input"] = _rebuild(update.get("input", spec.input), screened.texts[:n])
        if fields and screened.texts[n:] != tuple(t for _, t in fields):
            update["params"] = _put_texts(params, fields, screened.texts[n:])
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

    async def reserve(self, spec: TaskSpec, task_id: str) -> bool:
        """Hold the task's estimated cost against its tenant's budget; False when the tenant
        has none. ``InvalidTask`` for a model without a price (a budget cannot be kept on
        it); ``BudgetExceeded`` once spend and holds reach the budget."""
        if self.live.budgets.budget(spec.tenant) is None:
            return False
        params = spec.params
        model = params.get("model")
        texts = [*_texts(spec.input), *(t for _, t in _param_texts(params))]
        max_tokens = params.get("max_tokens", self.settings.max_output_tokens)
        usd = estimate_usd(texts, model if isinstance(model, str) else None, max_tokens)
        if usd is None:
            raise InvalidTask(
                "params.model",
                f"{model!r} has no price; a tenant with a budget needs a priced model",
            )
        self.budgets.config = self.live.budgets
        await self.budgets.reserve(spec.tenant, task_id, usd)
        return True

    async def release(self, tenant: str, task_id: str) -> None:
        await self.budgets.release(tenant, task_id)

    def pii_ttl_s(self, deadline_ms: int) -> int:
        """How long a task's PII mapping lives: its deadline plus the retention of results."""
        left = max(0, deadline_ms - int(time.time() * 1000)) // 1000
        return int(left + self.settings.task_retention_s) + 60

    @property
    def limits(self) -> DeploymentLimits:
        return self.live.limits

    async def ensure_loaded(self) -> None:
        await self.live.ensure_loaded()

    async def restore(self, tag: str, task_id: str, text: str) -> str:
        """``text`` with the task's PII placeholders put back from its vault (kept only when
        the tenant's policy allowed restoring)."""
        if not redaction.has_placeholders(text):
            return text
        return redaction.restore(text, await self.vault.get(tag, task_id))

    async def aclose(self) -> None:
        await self.live.aclose()


def hash_key(tenant: str, key: str) -> str:
    """What is stored of an idempotency key: a digest, deterministic per tenant (so repeats
    still deduplicate), that no longer shows the key (which may hold an order id or e-mail)."""
    digest = hashlib.sha256(f"{tenant}\x1f{key}".encode()).hexdigest()
    return f"sha256:{digest[:48]}"


Path = tuple[str | int, ...]


def _param_texts(params: dict[str, Any]) -> list[tuple[Path, str]]:
    """The free-text strings of ``params`` that are sent or stored, with where each is."""
    out: list[tuple[Path, str]] = []

    def walk(path: Path, value: Any) -> None:
        if isinstance(value, str):
            out.append((path, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk((*path, k), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk((*path, i), v)

    for key, value in params.items():
        if key in SCREENED_PARAMS or key.startswith(EXTENSION_PREFIX):
            walk((key,), value)
    return out


def _put_texts(
    params: dict[str, Any], fields: list[tuple[Path, str]], texts: tuple[str, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(params))  # a deep copy of plain JSON
    for (path, _), text in zip(fields, texts, strict=True):
        node: Any = out
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = text
    return out


def _blocked_field(cleaned: list[str], fields: list[tuple[Path, str]]) -> str:
    """The first field holding personal data, for ``PiiBlocked`` (its value is never shown)."""
    if any(detect(t) for t in cleaned):
        return "input"
    for path, text in fields:
        if detect(text):
            return "params." + str(path[0])
    return "input"


def _texts(value: str | list[ChatMessageIn]) -> list[str]:
    return [value] if isinstance(value, str) else [m.content for m in value]


def _rebuild(value: str | list[ChatMessageIn], texts: tuple[str, ...]) -> str | list[ChatMessageIn]:
    if isinstance(value, str):
        return texts[0]
    return [ChatMessageIn(role=m.role, content=t) for m, t in zip(value, texts, strict=True)]
