"""Readers of the log on a real 3-master Redis Cluster: the client refuses what a cluster
cannot run, and the shared connection factory and history reader work there."""

from __future__ import annotations

import contextlib

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from engine.client import Client
from engine.core.keys import PartitionKeys
from engine.core.logreader import is_cluster
from engine.runtime.connection import connect, connect_for, connect_sync_for
from projections.source import history
from tests.cluster import LocalCluster
from tests.conftest import fast_settings

pytestmark = pytest.mark.slow


async def test_cluster_client_refuses_a_cross_slot_xread(redis_cluster: LocalCluster) -> None:
    """redis-py's RedisCluster raises on one XREAD over two partitions' logs (it does not split
    it), so a component suite run on the cluster fails if a reader still sends one."""
    settings = fast_settings(redis_url=redis_cluster.url, redis_cluster=True, partitions=4)
    logs = [PartitionKeys(settings.namespace, p).log for p in range(2)]
    assert key_slot(logs[0].encode()) != key_slot(logs[1].encode())
    redis = connect(redis_cluster.url, cluster=True)
    try:
        for key in logs:
            await redis.xadd(key, {"x": "1"})
        with pytest.raises(RedisClusterException, match="same key slot"):
            await redis.xread(dict.fromkeys(logs, "0-0"))
    finally:
        await redis.aclose()


async def test_the_factory_follows_the_cluster_flag(redis_cluster: LocalCluster) -> None:
    """connect_for (and its blocking twin for the autoscaler) builds a cluster client exactly
    when AIIS_REDIS_CLUSTER says so."""
    on = connect_for(fast_settings(redis_url=redis_cluster.url, redis_cluster=True))
    off = connect_for(fast_settings(redis_url="redis://127.0.0.1:1"))
    sync_on = connect_sync_for(fast_settings(redis_cluster=True), redis_cluster.url)
    try:
        assert is_cluster(on) and not is_cluster(off)
        assert await on.ping()
        assert isinstance(sync_on, redis.RedisCluster) and sync_on.ping()
        assert not isinstance(connect_sync_for(fast_settings(), "redis://x"), redis.RedisCluster)
    finally:
        await on.aclose()
        await off.aclose()
        sync_on.close()


async def test_history_reads_every_partition_on_a_cluster(redis_cluster: LocalCluster) -> None:
    """The projections' page reader (pipelined XRANGE) reads each partition's log on a cluster
    client, page after page, in order."""
    settings = fast_settings(redis_url=redis_cluster.url, redis_cluster=True, partitions=4)
    async with Client.from_url(redis_cluster.url, settings) as client:
        ids = [await client.submit(f"t{i}") for i in range(40)]
        redis = client.store.redis
        seen = []
        for p in range(4):
            async with contextlib.aclosing(
                history(redis, settings.namespace, p, None, page_size=3)
            ) as pages:
                got = [entry async for page in pages for entry in page]
            want = await client.store.entries(client.store.keys(p).log)
            assert [e[0] for e in got] == [e[0] for e in want]
            seen.extend(got)
        assert len(seen) == len(ids)
