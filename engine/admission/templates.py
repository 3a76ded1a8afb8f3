"""Prompt templates: registered, versioned, rendered and validated at submit.

A template body uses ``{{name}}`` placeholders (spaces inside the braces allowed; names are
identifiers). Each template name is a Redis hash ``{namespace}:tpl:<name>``: field ``<n>`` ->
body of version n, ``latest`` -> n. Versions are immutable once registered (a new body is a new
version), so rendered bodies can be cached in-process without invalidation; ``latest`` is read
from Redis every time.

Rendering is one pass: a value containing ``{{x}}`` is inserted as text, never re-expanded.
Errors are ``InvalidTask`` subclasses naming the template, version and variables.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from engine.admission.script_args import build_template_register, parse_template_register
from engine.core.keys import template_key
from engine.core.scripts import lua_source
from engine.core.store import translate_errors
from engine.errors import ExtraVariables, MissingVariables, TemplateError, TemplateNotFound

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_BRACES = re.compile(r"\{\{|\}\}")
MAX_BODY_CHARS = 100_000
MAX_VARIABLES = 64
PARSED_CACHE = 1024

# KEYS: hash. ARGV: body. Returns the new version.
_REGISTER = lua_source("template_register", package="engine.admission")


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    version: int
    body: str
    variables: frozenset[str]


def parse(name: str, version: int, body: str) -> Template:
    """A checked template; ``TemplateError`` for a bad name, size or stray braces."""
    if not NAME.match(name):
        raise TemplateError(f"bad template name {name!r}: letters, digits, _ . - (max 64)")
    if not body.strip():
        raise TemplateError(f"template {name!r} is empty")
    if len(body) > MAX_BODY_CHARS:
        raise TemplateError(f"template {name!r} is longer than {MAX_BODY_CHARS} characters")
    names = frozenset(_VAR.findall(body))
    if _BRACES.search(_VAR.sub("", body)):
        raise TemplateError(f"template {name!r} has '{{{{' or '}}}}' that is not a {{{{name}}}}")
    if len(names) > MAX_VARIABLES:
        raise TemplateError(f"template {name!r} has more than {MAX_VARIABLES} variables")
    return Template(name, version, body, names)


def render(template: Template, variables: Mapping[str, object]) -> str:
    """The body with every variable filled in; missing or extra variables are errors."""
    given = set(variables)
    missing = sorted(template.variables - given)
    if missing:
        raise MissingVariables(template.name, template.version, missing)
    extra = sorted(given - template.variables)
    if extra:
        raise ExtraVariables(template.name, template.version, extra)
    for k, v in variables.items():
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise TemplateError(f"variable {k!r} must be a string or a number", "params.variables")
    return _VAR.sub(lambda m: str(variables[m.group(1)]), template.body)


class TemplateStore:
    """Register and fetch template versions in Redis."""

    def __init__(self, redis: aioredis.Redis, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace
        self._register = redis.register_script(_REGISTER)
        self._parsed: OrderedDict[tuple[str, int], Template] = OrderedDict()

    async def register(self, name: str, body: str) -> int:
        """Store ``body`` as the next version of ``name``; returns that version."""
        parse(name, 1, body)
        with translate_errors():
            keys, args = build_template_register(template_key(self.namespace, name), body)
            version = parse_template_register(await self._register(keys=keys, args=args))
        return version

    async def get(self, name: str, version: int | None = None) -> Template:
        """A version of a template (the latest when ``version`` is None)."""
        if not NAME.match(name):
            raise TemplateNotFound(f"unknown template {name!r}")
        if version is not None:
            cached = self._parsed.get((name, version))
            if cached is not None:
                self._parsed.move_to_end((name, version))
                return cached
        key = template_key(self.namespace, name)
        with translate_errors():
            if version is None:
                latest = await self.redis.hget(key, "latest")
                if latest is None:
                    raise TemplateNotFound(f"unknown template {name!r}")
                version = int(latest)
            body = await self.redis.hget(key, str(version))
            exists = body is not None or await self.redis.exists(key)
        if body is None:
            if not exists:
                raise TemplateNotFound(f"unknown template {name!r}")
            raise TemplateNotFound(f"template {name!r} has no version {version}")
        text = body.decode() if isinstance(body, bytes) else str(body)
        template = parse(name, version, text)
        self._parsed[(name, version)] = template
        if len(self._parsed) > PARSED_CACHE:
            self._parsed.popitem(last=False)
        return template

    async def render(
        self, name: str, variables: Mapping[str, object], version: int | None = None
    ) -> tuple[str, int]:
        """(rendered prompt, version used): what submit stores as the task's input."""
        template = await self.get(name, version)
        return render(template, variables), template.version
