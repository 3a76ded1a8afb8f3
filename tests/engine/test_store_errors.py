"""No ``redis.*`` exception escapes the store or the client: a real redis-server's refusals
surface as ``EngineError``s chained (``from``) to the redis error."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from engine.client import Client
from engine.core.store import translate_errors
from engine.errors import EngineError, RedisCommandError, RedisUnavailable

MakeClient = Callable[..., Client]


async def _break_state(client: Client) -> None:
    """Replace every partition's state hash by a string, so any command on it is WRONGTYPE."""
    redis: aioredis.Redis = client.store.redis
    for keys in client.store.partitions:
        await redis.set(keys.state, "not a hash")


def _assert_translated(error: BaseException, task_id: str) -> None:
    assert isinstance(error, RedisCommandError)
    assert isinstance(error.__cause__, ResponseError)
    assert "WRONGTYPE" in str(error)
    assert task_id not in str(error)  # Redis' words only, not the command redis-py quotes


async def test_store_read_of_a_wrong_type_key_raises_an_engine_error(
    real_client: MakeClient,
) -> None:
    """A plain store read refused by Redis (WRONGTYPE) raises RedisCommandError from the
    ResponseError, never the ResponseError itself."""
    client = real_client()
    task_id = await client.submit("hello", tenant="acme")
    await _break_state(client)
    with pytest.raises(EngineError) as info:
        await client.store.state(client._partition(task_id), task_id)
    _assert_translated(info.value, task_id)


async def test_client_calls_on_a_wrong_type_key_raise_engine_errors(
    real_client: MakeClient,
) -> None:
    """Client.get (a read), Client.cancel and Client.submit (Lua scripts) turn Redis'
    WRONGTYPE refusal into RedisCommandError chained to the ResponseError."""
    client = real_client()
    task_id = await client.submit("hello", tenant="acme")
    await _break_state(client)
    with pytest.raises(EngineError) as got:
        await client.get(task_id)
    _assert_translated(got.value, task_id)
    with pytest.raises(EngineError) as cancelled:
        await client.cancel(task_id, tenant="acme")
    _assert_translated(cancelled.value, task_id)
    with pytest.raises(EngineError) as submitted:
        await client.submit("again", tenant="acme")
    _assert_translated(submitted.value, task_id)


@pytest.mark.parametrize(
    "error",
    [
        ReadOnlyError("READONLY You can't write against a read only replica."),
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        TryAgainError("TRYAGAIN"),
        SlotNotCoveredError("slot 7 is not covered"),
    ],
)
def test_transient_refusals_are_redis_unavailable(error: Exception) -> None:
    """Refusals that pass with a failover or resharding (READONLY, CLUSTERDOWN, TRYAGAIN, an
    uncovered slot) become RedisUnavailable, chained, like a lost connection."""
    with pytest.raises(RedisUnavailable) as info, translate_errors():
        raise error
    assert info.value.__cause__ is error


def test_other_cluster_client_errors_are_engine_errors() -> None:
    """redis-py's cluster exceptions, which are not RedisErrors, do not escape either."""
    error = RedisClusterException("no way to route this command")
    with pytest.raises(RedisCommandError) as info, translate_errors():
        raise error
    assert info.value.__cause__ is error


def _unguarded_redis_calls(path: Path) -> list[str]:
    """``file:line: call`` of every awaited Redis call not inside ``with translate_errors()``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Await) and isinstance(node.value, ast.Call)):
            continue
        call = ast.unparse(node.value.func)
        if not re.search(r"(^|\.)redis\.|^pipe\.|_scripts\[", call):
            continue
        up: ast.AST = node
        while up in parents:
            up = parents[up]
            if isinstance(up, ast.With) and any(
                "translate_errors" in ast.unparse(item.context_expr) for item in up.items
            ):
                break
        else:
            found.append(f"{path.name}:{node.lineno}: {call}")
    return found


def test_every_redis_call_of_the_store_and_client_is_translated() -> None:
    """Each awaited Redis call in the core's store and client (and the composed client) runs
    under translate_errors, so a new call cannot let a redis exception escape."""
    engine = Path(__file__).resolve().parents[2] / "engine"
    paths = [engine / "core" / "store.py", engine / "core" / "client.py", engine / "client.py"]
    assert all(p.is_file() for p in paths)
    assert [hit for p in paths for hit in _unguarded_redis_calls(p)] == []
