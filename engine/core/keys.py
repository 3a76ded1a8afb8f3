"""Every Redis key the service uses, built in one place.

All keys of one partition share the hash tag ``{p<N>}`` so every atomic script touches a single
Redis Cluster slot. A task lives in exactly one partition, chosen from its id
(``partition_of``); ids minted for a given partition satisfy that mapping
(``new_task_id``), which is how idempotent submits land where their key is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from dataclasses import dataclass
from enum import StrEnum

GROUP = "workers"
INTAKE_GROUP = "admission"  # the consumer group of the intake stream (engine/runtime/intake.py)


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITIES: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


def partition_of(task_id: str, partitions: int) -> int:
    """The partition that owns ``task_id``."""
    return zlib.crc32(task_id.encode()) % partitions


def partition_for_key(tenant: str, idempotency_key: str, partitions: int) -> int:
    """The partition that stores an idempotency key (and so the task it names)."""
    return zlib.crc32(f"{tenant}\x1f{idempotency_key}".encode()) % partitions


def new_task_id(partition: int, partitions: int) -> str:
    """A random 128-bit task id (hex) that ``partition_of`` maps to ``partition``."""
    while True:  # expected `partitions` draws; a handful at most in practice
        task_id = secrets.token_hex(16)
        if partition_of(task_id, partitions) == partition:
            return task_id


def intake_task_id(stream: str, intake_id: str) -> str:
    """The task id of the intake entry ``intake_id`` of ``stream`` (128 bits, hex): the same on
    every delivery, so an entry admitted again after a crash finds its task already there
    (submit.lua answers ``dup``) instead of creating a second one."""
    return hashlib.sha256(f"{stream}\x1f{intake_id}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The keys of one partition; ``script_keys`` is the KEYS order every Lua script expects."""

    namespace: str
    partition: int

    @property
    def tag(self) -> str:
        return f"{self.namespace}:{{p{self.partition}}}"

    @property
    def log(self) -> str:
        """Event log stream: every state change of every task of the partition."""
        return f"{self.tag}:log"

    def queue(self, priority: str) -> str:
        """Work stream of one priority, consumed by the ``workers`` group."""
        return f"{self.tag}:q:{priority}"

    @property
    def delayed(self) -> str:
        """Sorted set of tasks waiting for a retry, scored by due time (unix ms)."""
        return f"{self.tag}:delayed"

    @property
    def state(self) -> str:
        """Hash task id -> state word ``code|attempt|tenant|priority|ref|requested_id``."""
        return f"{self.tag}:state"

    @property
    def task(self) -> str:
        """Hash task id -> task record (JSON: kind, input, params, deadline …)."""
        return f"{self.tag}:task"

    @property
    def idem(self) -> str:
        """Hash ``tenant\\x1fkey`` -> task id, for idempotent submits."""
        return f"{self.tag}:idem"

    @property
    def dlq(self) -> str:
        """Dead-letter stream."""
        return f"{self.tag}:dlq"

    @property
    def done(self) -> str:
        """Sorted set of terminal tasks scored by finish time, for retention."""
        return f"{self.tag}:done"

    @property
    def callbacks(self) -> str:
        """Hash task id -> callback URL, until ``aiis ops`` has delivered the terminal event."""
        return f"{self.tag}:cb"

    @property
    def kept(self) -> str:
        """Hash task id -> the task's events kept once its part of the log was archived and
        trimmed (JSON ``[[id, [field, value, …]], …]``, log ids), until the janitor forgets the
        task (``script_keys``' last: history.lua and janitor.lua read it)."""
        return f"{self.tag}:kept"

    @property
    def script_keys(self) -> list[str]:
        return [
            self.log,
            self.queue(Priority.HIGH),
            self.queue(Priority.NORMAL),
            self.queue(Priority.LOW),
            self.delayed,
            self.state,
            self.task,
            self.idem,
            self.dlq,
            self.done,
            self.callbacks,
            self.kept,
        ]


def meta_key(namespace: str) -> str:
    """Hash of deployment facts (partition count) checked by every component at start."""
    return f"{namespace}:meta"


def all_partitions(namespace: str, partitions: int) -> list[PartitionKeys]:
    return [PartitionKeys(namespace, p) for p in range(partitions)]


def autoscale_key(namespace: str, pool: str) -> str:
    """Hash describing one autoscaled worker pool (current and target size, last decision)."""
    return f"{namespace}:autoscale:{pool}"


def autoscale_pattern(namespace: str) -> str:
    return f"{namespace}:autoscale:*"


def autoscale_pool_of(namespace: str, key: bytes) -> str:
    """The pool an ``autoscale_key`` (as SCAN returns it) names."""
    return key.decode().removeprefix(autoscale_key(namespace, ""))


def config_key(namespace: str) -> str:
    """Hash of live configuration documents (``aiis config set``): pii_policy, budgets."""
    return f"{namespace}:config"


def ops_key(namespace: str) -> str:
    """Stream of operational events: ``AlertRaised``, ``AlertResolved``, ``WebhookAttempted``."""
    return f"{namespace}:ops"


def ops_checkpoint_key(namespace: str) -> str:
    """Hash partition -> last log id ``aiis ops`` has handled."""
    return f"{namespace}:ops:checkpoint"


def budget_keys(namespace: str, tenant: str, day: str) -> tuple[str, str, str, str]:
    """(holds, spent, seen, held) of one tenant's budget on ``day``: the reservations by task
    (every day), the day's spend and settled tasks, the day's reserved total. One hash tag per
    tenant, so a reservation made one day settles atomically on the next (Cluster too)."""
    tag = f"{namespace}:{{budget:{tenant}}}"
    return f"{tag}:holds", f"{tag}:{day}:spent", f"{tag}:{day}:seen", f"{tag}:{day}:held"


def _tag_prefix(hash_tag_prefix: str) -> str:
    """``hash_tag_prefix`` itself, once checked to carry a hash tag (``aiis:{p3}``)."""
    if "{" not in hash_tag_prefix or "}" not in hash_tag_prefix:
        raise ValueError("the prefix must carry a hash tag, e.g. 'aiis:{p3}'")
    return hash_tag_prefix


def vault_key(hash_tag_prefix: str, task_id: str) -> str:
    """String with a TTL: one task's PII restore mapping, ``<tag>:pii:<task>``, in the task's
    slot (``hash_tag_prefix`` is ``PartitionKeys.tag``)."""
    return f"{_tag_prefix(hash_tag_prefix)}:pii:{task_id}"


def blob_key(hash_tag_prefix: str, task_id: str, attempt: int) -> str:
    """String with a TTL: an offloaded result, ``<tag>:result:<task>:<attempt>``, in the task's
    slot (``hash_tag_prefix`` is ``PartitionKeys.tag``)."""
    return f"{_tag_prefix(hash_tag_prefix)}:result:{task_id}:{attempt}"


def correlation_key(hash_tag_prefix: str, tenant: str, correlation_id: str) -> str:
    """String with a TTL: the task id of the latest intake task of ``tenant`` carrying
    ``correlation_id``, ``<tag>:corr:<tenant>\x1f<id>``, in the task's slot (submit.lua builds
    the same name; ``hash_tag_prefix`` is ``PartitionKeys.tag``)."""
    return f"{_tag_prefix(hash_tag_prefix)}:corr:{tenant}\x1f{correlation_id}"


def followers_key(hash_tag_prefix: str, tenant: str, stored_key: str) -> str:
    """Counter with a TTL: how many OpenAI-compatible requests carrying one idempotency key
    follow its task right now, across gateway processes (gateway/openai/shared.py),
    ``<tag>:followers:<tenant>\x1f<key>``; ``stored_key`` is the key as the task stores it
    (hashed), ``hash_tag_prefix`` the tag of the partition that stores it (the task's slot)."""
    return f"{_tag_prefix(hash_tag_prefix)}:followers:{tenant}\x1f{stored_key}"


def intake_key(namespace: str) -> str:
    """The intake stream producers XADD to, ``<namespace>:intake`` as DESIGN.md §4 names it
    (``AIIS_INTAKE_STREAM`` overrides it)."""
    return f"{namespace}:intake"


def legacy_intake_key(namespace: str) -> str:
    """The default intake stream of earlier releases, ``<namespace>:{intake}``: drained while
    it exists, so an upgrade strands no entry (engine/runtime/intake.py)."""
    return f"{namespace}:{{intake}}"


def intake_rejected_key(stream: str) -> str:
    """Capped stream of the intake entries refused: ``<intake stream>:rejected``."""
    return f"{stream}:rejected"


def audit_key(namespace: str) -> str:
    """Stream of audit entries (who did what, scrubbed)."""
    return f"{namespace}:audit"


def template_key(namespace: str, name: str) -> str:
    """Hash of one prompt template's versions."""
    return f"{namespace}:tpl:{name}"


def cache_keys(namespace: str, shard: int, digest: str) -> tuple[str, str]:
    """(entry, lru) of a result-cache entry: the entry string and its shard's LRU zset. One hash
    tag per shard (``{cache:<shard>}``), so an entry and its index share a slot."""
    tag = f"{namespace}:{{cache:{shard}}}"
    return f"{tag}:e:{digest}", f"{tag}:lru"


def log_key_template(namespace: str) -> str:
    """How a partition's log is named, for documentation: ``<ns>:{p<N>}:log``."""
    return f"{namespace}:{{p<N>}}:log"
