"""Every Redis key of the projections, built in one place.

A view is stored as one shard per partition, under the partition's hash tag (``{p<N>}``, the
tag of its event log), so each atomic step — a shard update and its checkpoint — touches a
single Redis Cluster slot. Readers merge the shards. Per partition and projection:

    <ns>:{pN}:proj:<name>            hash  entry key -> JSON record (the view shard)
    <ns>:{pN}:proj:<name>:meta       hash  ckpt (last applied id), gen, events, ts, halted
    <ns>:{pN}:proj:<name>:rebuild    \
    <ns>:{pN}:proj:<name>:rebuild:meta   the same, while ``aiis replay`` builds; then renamed
    <ns>:{pN}:proj:archive           hash  archived_to (last archived id), segments, events
    <ns>:{pN}:proj:archive:lock      string, held by the one ``aiis archive`` working on it
    <ns>:proj:search:secret          string, signs the task search's page cursors
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.keys import PartitionKeys


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one projection's shard in one partition."""

    namespace: str
    partition: int
    name: str

    @property
    def base(self) -> str:
        return f"{PartitionKeys(self.namespace, self.partition).tag}:proj:{self.name}"

    @property
    def view(self) -> str:
        return self.base

    @property
    def meta(self) -> str:
        return f"{self.base}:meta"

    @property
    def rebuild_view(self) -> str:
        return f"{self.base}:rebuild"

    @property
    def rebuild_meta(self) -> str:
        return f"{self.base}:rebuild:meta"


def log_key(namespace: str, partition: int) -> str:
    return PartitionKeys(namespace, partition).log


def dlq_key(namespace: str, partition: int) -> str:
    return PartitionKeys(namespace, partition).dlq


def archive_key(namespace: str, partition: int) -> str:
    return f"{PartitionKeys(namespace, partition).tag}:proj:archive"


def archive_lock_key(namespace: str, partition: int) -> str:
    return f"{archive_key(namespace, partition)}:lock"


def search_secret_key(namespace: str) -> str:
    return f"{namespace}:proj:search:secret"
