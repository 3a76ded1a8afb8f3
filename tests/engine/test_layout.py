"""engine/'s inside (docs/architecture.md): the core imports none of the parts around it, and
one task from ``submit`` to its terminal event runs through the few core files the map names."""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from engine.client import Client
from engine.core.events import TERMINAL_CODES
from engine.runtime.workers import new_worker
from providers.echo import ScriptedProvider
from tests.conftest import fast_settings

ENGINE = Path(__file__).resolve().parents[2] / "engine"
# part -> the parts of engine/ it must never import (the composed engine.client is a root)
FORBIDDEN = {
    "core": {"engine.admission", "engine.operations", "engine.runtime", "engine.client"},
    "admission": {"engine.operations", "engine.runtime", "engine.client"},
    "operations": {"engine.runtime"},
}
SUBPACKAGES = {"core", "admission", "operations", "runtime"}
# the files a reader opens to follow one task (docs/architecture.md "The hot path")
HOT_PATH = {
    "core/client.py",
    "core/task.py",
    "core/store.py",
    "core/script_args.py",
    "core/worker.py",
    "core/outbox.py",
    "core/events.py",
}
HOT_SCRIPTS = {"core/lua/submit.lua", "core/lua/fetch.lua", "core/lua/commit.lua"}
# small helpers the hot path calls into (ids and keys, params, the in-flight limit, blobs)
HELPERS = {"core/keys.py", "core/params.py", "core/inflight.py", "core/blobs.py", "core/mapper.py"}


def engine_imports(source: str) -> set[str]:
    """Every engine module ``source`` imports, lazily or not (``from engine import core`` is
    ``engine.core``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("engine")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "engine":
                found |= {f"engine.{a.name}" for a in node.names if a.name in SUBPACKAGES}
                found.add("engine")
            elif node.module.startswith("engine."):
                found.add(node.module)
    return found


def violations(part: str, source: str) -> list[str]:
    return sorted(
        m
        for m in engine_imports(source)
        if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[part])
    )


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_parts_of_the_engine_import_inward_only(part: str) -> None:
    """The core imports no admission, operations, runtime or composed client; admission no
    operations or runtime; operations no runtime."""
    found = {
        str(path.relative_to(ENGINE)): bad
        for path in (ENGINE / part).rglob("*.py")
        if (bad := violations(part, path.read_text()))
    }
    assert found == {}


def test_the_gate_sees_lazy_and_package_imports() -> None:
    """An import inside a function, or ``from engine import runtime``, is caught too."""
    source = "def f():\n    from engine.admission.pii import detect\nfrom engine import runtime\n"
    assert violations("core", source) == ["engine.admission.pii", "engine.runtime"]


def test_every_engine_module_is_in_a_part() -> None:
    """Only the public face (``__init__``, ``__main__``), the composed client and the two
    shared modules (errors, settings) sit at engine/'s top level."""
    top = {p.name for p in ENGINE.glob("*.py")}
    assert top == {"__init__.py", "__main__.py", "client.py", "errors.py", "settings.py"}


async def test_one_task_runs_through_the_core_files_the_map_names(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Profiled from ``submit`` to its ``TaskSucceeded``: the core files executed are the hot
    path of docs/architecture.md and its small helpers, and the scripts run are its three."""
    settings = fast_settings(redis_url=redis_url, namespace="hotpath", partitions=1)
    client = Client.from_url(redis_url, settings)
    await client.store.prepare()
    worker = new_worker(client.store, ScriptedProvider(), concurrency=2)
    await client.submit("warm up")  # first-use paths (deployment check, loading) are not per task
    runner = asyncio.create_task(worker.run())
    files: set[str] = set()
    scripts: set[str] = set()
    run = client.store._run

    async def recorded(name: str, *args: Any) -> Any:
        scripts.add(name)
        return await run(name, *args)

    monkeypatch.setattr(client.store, "_run", recorded)

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        name = frame.f_code.co_filename
        if event == "call" and name.startswith(str(ENGINE / "core")):
            files.add(str(Path(name).relative_to(ENGINE)))

    try:
        sys.setprofile(profile)
        try:
            task_id = await client.submit("follow me")
            # polls the state word: the profile must see the reads a caller makes
            for _ in range(3000):
                word = await client.state_word(task_id)
                if word is not None and word.code in TERMINAL_CODES:
                    break
                await asyncio.sleep(0.01)
        finally:
            sys.setprofile(None)
    finally:
        worker.stop()
        await runner
        await client.aclose()
    # events.py is read, not run: its models are validated by pydantic's compiled core
    assert HOT_PATH - files == {"core/events.py"}, HOT_PATH - files
    assert files - HOT_PATH <= HELPERS, files - HOT_PATH - HELPERS
    assert {f"core/lua/{name}.lua" for name in scripts} == HOT_SCRIPTS
    assert len(HOT_PATH) + len(HOT_SCRIPTS) <= 10
