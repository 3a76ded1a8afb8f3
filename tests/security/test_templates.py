"""Prompt templates: versions in Redis, strict rendering (engine/admission/templates.py)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from engine.admission.templates import TemplateStore, parse, render
from engine.errors import (
    ExtraVariables,
    InvalidTask,
    MissingVariables,
    TemplateError,
    TemplateNotFound,
)


def test_render_fills_variables_once() -> None:
    """Variables are filled in one pass; a value containing {{x}} is not expanded again."""
    t = parse("greet", 1, "Hello {{ name }}, you are {{age}}. Bye {{name}}.")
    assert t.variables == {"name", "age"}
    assert render(t, {"name": "{{age}}", "age": 3}) == "Hello {{age}}, you are 3. Bye {{age}}."


def test_missing_and_extra_variables_are_named() -> None:
    """Missing and extra variables are InvalidTask errors listing the names."""
    t = parse("greet", 2, "Hi {{name}} from {{city}}")
    with pytest.raises(MissingVariables, match=r"\['city'\]") as info:
        render(t, {"name": "x"})
    assert isinstance(info.value, InvalidTask) and info.value.field == "params.variables"
    with pytest.raises(ExtraVariables, match=r"\['zip'\]"):
        render(t, {"name": "x", "city": "y", "zip": "z"})
    with pytest.raises(TemplateError, match="string or a number"):
        render(t, {"name": ["x"], "city": "y"})


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("bad name!", "x", "bad template name"),
        ("ok", "   ", "empty"),
        ("ok", "Hi {{ 1abc }}", "not a"),
        ("ok", "Hi {{name}", "not a"),
    ],
)
def test_bad_templates_are_refused(name: str, body: str, reason: str) -> None:
    """Bad names, empty bodies and malformed placeholders are refused at registration."""
    with pytest.raises(TemplateError, match=reason):
        parse(name, 1, body)


async def test_versions_are_stored_and_rendered(redis: aioredis.Redis, namespace: str) -> None:
    """Each registration is a new version; latest is the default; old versions stay."""
    store = TemplateStore(redis, namespace)
    assert await store.register("summary", "Summarise: {{text}}") == 1
    assert await store.register("summary", "Summarise in {{lang}}: {{text}}") == 2
    assert await store.render("summary", {"text": "a", "lang": "ja"}) == ("Summarise in ja: a", 2)
    assert await store.render("summary", {"text": "a"}, version=1) == ("Summarise: a", 1)
    with pytest.raises(MissingVariables):
        await store.render("summary", {"text": "a"})


async def test_unknown_template_or_version(redis: aioredis.Redis, namespace: str) -> None:
    """Unknown templates and versions are clear TemplateNotFound errors."""
    store = TemplateStore(redis, namespace)
    with pytest.raises(TemplateNotFound, match="unknown template 'nope'"):
        await store.get("nope")
    await store.register("t", "x {{y}}")
    with pytest.raises(TemplateNotFound, match="no version 7"):
        await store.get("t", 7)
