"""Several API keys per provider, rotated: on ``AuthFailed`` the call is repeated with the next
key (the task never sees the failure while a good key is left); on a schedule, round-robin.

A rejection is not proof: providers answer a brief 401 during their own incidents. The first
rejection makes a key *suspect* (other keys are preferred, it stays usable); it is confirmed bad
— skipped for ``AIIS_KEY_BAD_FOR_S`` — only when a call that took it *after* it became suspect is
rejected too (calls already in flight do not confirm). A success clears the suspicion. When the
only keys left to try are merely suspect the call raises ``KeyRejected``, which the engine
retries; ``NoUsableKey`` means every key is confirmed bad. A reload clears the marks of every
key it reads (rewriting the file with the same key is how an operator says "it is good").

Keys come from the environment (``GEMINI_API_KEY="k1,k2"``, read by ``providers.config``) or
from a secrets directory (``/run/secrets/gemini_api_key``: one key per line, ``#`` comments). A
provider's secrets file, when present, replaces its variable (``providers.credentials.keysources``).

``reload()`` re-reads the sources without a restart (wire it to SIGHUP with
``install_sighup``, or poll with ``watch_files``); a malformed source leaves the last good key
set in use. Alerts (a key rejected, every key of a provider rejected, a reload failed) go to
the ``on_alert`` callback as ``KeyAlert`` records.

Keys are ``SecretStr`` and only ever named by ``Key.id`` (a short fingerprint) in logs,
alerts and errors. ``KEY_IN_USE`` carries the key of the current call to the adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import SecretStr

from providers.adapters.base import KEY_IN_USE, Reply
from providers.credentials.keysources import (
    MAX_KEYS_PER_PROVIDER,
    KeySets,
    default_loader,
    dir_keys,
    env_keys,
    files_signature,
)
from providers.credentials.scrub import Scrubber
from providers.errors import AuthFailed, KeyRejected, NoUsableKey, SecretsError
from providers.router import Adapter
from providers.types import ProgressSink, ProviderRequest

# the sources' names stay importable from here (keysources holds them)
__all__ = [
    "KEY_IN_USE",
    "MAX_KEYS_PER_PROVIDER",
    "Key",
    "KeyAlert",
    "KeyRejected",
    "KeySets",
    "Keyring",
    "NoUsableKey",
    "RotatingAdapter",
    "SecretsError",
    "default_loader",
    "dir_keys",
    "env_keys",
    "key_id",
    "wrap_adapters",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Key:
    provider: str
    id: str  # fingerprint: safe to log
    secret: SecretStr = field(repr=False)


def key_id(provider: str, secret: str) -> str:
    return f"{provider}:{hashlib.sha256(secret.encode()).hexdigest()[:10]}"


AlertKind = Literal["key_rejected", "provider_keys_exhausted", "secrets_reload_failed"]


@dataclass(frozen=True, slots=True)
class KeyAlert:
    kind: AlertKind
    provider: str | None
    key_ids: tuple[str, ...]
    message: str


# --- the keyring ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Ring:
    keys: list[Key]
    cursor: int = 0
    bad_until: dict[str, float] = field(default_factory=dict)
    suspect_since: dict[str, float] = field(default_factory=dict)  # first rejection, by key id
    exhausted_alerted: bool = False


class Keyring:
    """The live key sets of every provider, rotated on failure and on a schedule."""

    def __init__(
        self,
        loader: Callable[[], KeySets],
        *,
        on_alert: Callable[[KeyAlert], None] | None = None,
        bad_for_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        sandbox: bool = False,
    ) -> None:
        self._loader = loader
        self.sandbox = sandbox  # the keys are the sandbox's placeholders (said so in the log)
        self._on_alert = on_alert
        self.bad_for_s = bad_for_s
        self._clock = clock
        self._rings: dict[str, _Ring] = {}
        self._scrubber = Scrubber(())
        # called after every reload but the first, with whether the new keys are in use
        self.on_reload: Callable[[bool], None] | None = None
        self.reload(initial=True)

    # --- loading -------------------------------------------------------------------------

    def reload(self, *, initial: bool = False) -> bool:
        """Re-read the sources; True when the new key sets are in use. On a malformed source
        the last good sets stay (at start: the error is raised)."""
        try:
            sets = self._loader()
        except SecretsError as exc:
            if initial:
                raise
            log.error("key reload failed, keeping the last good keys: %s", exc)
            self._alert("secrets_reload_failed", None, (), str(exc))
            if self.on_reload is not None:
                self.on_reload(False)
            return False
        rings: dict[str, _Ring] = {}
        for provider, secrets in sets.items():
            keys: list[Key] = []
            seen: set[str] = set()
            for s in secrets[:MAX_KEYS_PER_PROVIDER]:
                kid = key_id(provider, s.get_secret_value())
                if kid not in seen:
                    seen.add(kid)
                    keys.append(Key(provider, kid, s))
            # a fresh ring: the marks of keys re-read are cleared (see the module docstring)
            rings[provider] = _Ring(keys)
        self._rings = rings
        self._scrubber = Scrubber(
            k.secret.get_secret_value() for r in rings.values() for k in r.keys
        )
        if self.sandbox:
            log.info("sandbox mode: every provider points at the sandbox; no API keys in use")
        else:
            log.info("keys loaded: %s", {p: len(r.keys) for p, r in rings.items()})
        if not initial and self.on_reload is not None:
            self.on_reload(True)
        return True

    def providers(self) -> list[str]:
        return [p for p, r in self._rings.items() if r.keys]

    def scrubber(self) -> Scrubber:
        """Removes every loaded key from text (provider replies that echo a key)."""
        return self._scrubber

    def key_ids(self, provider: str) -> list[str]:
        ring = self._rings.get(provider)
        return [k.id for k in ring.keys] if ring else []

    # --- selection -----------------------------------------------------------------------

    def _usable(self, ring: _Ring, key: Key) -> bool:
        return ring.bad_until.get(key.id, 0.0) <= self._clock()

    def current(self, provider: str) -> Key:
        """The key to use now: from the cursor, the first not marked bad, preferring keys that
        are not suspect. Raises NoUsableKey when every key is marked bad."""
        key = self._pick(provider, ())
        assert key is not None  # nothing skipped: _pick raises rather than return None
        return key

    def _pick(self, provider: str, skip: Collection[str]) -> Key | None:
        """``current`` among the keys not in ``skip``; None when only ``skip`` keys are left."""
        ring = self._rings.get(provider)
        if ring is None or not ring.keys:
            raise NoUsableKey(f"no API key configured for {provider}", provider=provider)
        n = len(ring.keys)
        usable = [
            (ring.cursor + step) % n
            for step in range(n)
            if self._usable(ring, ring.keys[(ring.cursor + step) % n])
        ]
        if not usable:
            raise NoUsableKey(f"every API key of {provider} was rejected", provider=provider)
        left = [i for i in usable if ring.keys[i].id not in skip]
        trusted = [i for i in left if ring.keys[i].id not in ring.suspect_since]
        for i in trusted or left:
            ring.cursor = i
            return ring.keys[i]
        return None

    def rotate(self, provider: str) -> None:
        """Scheduled round-robin: move the provider to its next key."""
        ring = self._rings.get(provider)
        if ring is not None and ring.keys:
            ring.cursor = (ring.cursor + 1) % len(ring.keys)

    def rejected(self, provider: str, kid: str, taken_at: float) -> bool:
        """A call that took key ``kid`` at ``taken_at`` was rejected. True when that confirms
        the key bad (it was suspect before the call took it), else it becomes suspect."""
        ring = self._rings.get(provider)
        if ring is None:
            return False
        since = ring.suspect_since.get(kid)
        if since is not None and taken_at > since:
            self.mark_failed(provider, kid)
            return True
        if since is None:
            ring.suspect_since[kid] = self._clock()
            log.warning("%s: key %s rejected once; suspect until a second rejection", provider, kid)
            self._alert("key_rejected", provider, (kid,), f"{provider} rejected key {kid}")
        return False

    def accepted(self, provider: str, kid: str) -> None:
        """A call with key ``kid`` succeeded: it is no longer suspect."""
        ring = self._rings.get(provider)
        if ring is not None and ring.suspect_since:
            ring.suspect_since.pop(kid, None)

    def mark_failed(self, provider: str, kid: str) -> None:
        """Key ``kid`` is confirmed bad (a second rejection, or a probe): skip it for
        ``bad_for_s`` and move on to the next."""
        ring = self._rings.get(provider)
        if ring is None or ring.bad_until.get(kid, 0.0) > self._clock():
            return  # concurrent calls saw the same rejection: mark (and alert) once
        alerted = ring.suspect_since.pop(kid, None) is not None  # at its first rejection
        ring.bad_until[kid] = self._clock() + self.bad_for_s
        log.warning("%s: key %s rejected; marked bad for %.0f s", provider, kid, self.bad_for_s)
        if not alerted:
            self._alert("key_rejected", provider, (kid,), f"{provider} rejected key {kid}")
        if all(not self._usable(ring, k) for k in ring.keys):
            if not ring.exhausted_alerted:
                ring.exhausted_alerted = True
                ids = tuple(k.id for k in ring.keys)
                self._alert(
                    "provider_keys_exhausted", provider, ids, f"every key of {provider} rejected"
                )
        else:
            ring.exhausted_alerted = False
            self.rotate(provider)

    def _alert(
        self, kind: AlertKind, provider: str | None, ids: tuple[str, ...], message: str
    ) -> None:
        if self._on_alert is not None:
            self._on_alert(KeyAlert(kind, provider, ids, message))

    # --- calling -------------------------------------------------------------------------

    async def call(self, provider: str, fn: Callable[[Key], Awaitable[T]]) -> T:
        """``fn(key)`` with the current key; on ``AuthFailed`` ``fn`` runs again with the next
        key, until a key works or none is left to try. Then: the last ``AuthFailed`` when every
        key is confirmed bad, else ``KeyRejected`` (retryable: a key tried here is only
        suspect)."""
        last: AuthFailed | None = None
        tried: set[str] = set()
        while True:
            try:
                key = self._pick(provider, tried)
            except NoUsableKey as exc:
                if last is not None:
                    raise last from exc
                raise
            if key is None:  # every key not confirmed bad was tried, and is suspect now
                assert last is not None
                raise KeyRejected(
                    f"{last.message} (key not yet confirmed bad: retried)",
                    provider=provider,
                    status=last.status,
                ) from last
            tried.add(key.id)
            taken_at = self._clock()
            token = KEY_IN_USE.set(key.secret)
            try:
                result = await fn(key)
            except AuthFailed as exc:
                last = exc
                self.rejected(provider, key.id, taken_at)
            else:
                self.accepted(provider, key.id)
                return result
            finally:
                KEY_IN_USE.reset(token)

    # --- reload triggers ------------------------------------------------------------------

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Reload on SIGHUP (Unix, in the running event loop)."""
        (loop or asyncio.get_running_loop()).add_signal_handler(signal.SIGHUP, self.reload)

    async def watch_files(
        self, directory: Path, stop: asyncio.Event, interval_s: float = 5.0
    ) -> None:
        """Poll the secrets files' mtimes and sizes; reload when they change, until ``stop``."""
        last = files_signature(directory)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            now = files_signature(directory)
            if now != last:
                last = now
                self.reload()

    async def rotate_every(self, interval_s: float, stop: asyncio.Event) -> None:
        """Round-robin every provider to its next key every ``interval_s``, until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if not stop.is_set():
                for provider in self.providers():
                    self.rotate(provider)


class RotatingAdapter:
    """An adapter whose calls go through the keyring: the key rides in ``KEY_IN_USE`` (the
    adapter's ``_key()`` reads it) and a rejected key is swapped before the router sees it."""

    def __init__(self, inner: Adapter, keyring: Keyring) -> None:
        self.inner = inner
        self.keyring = keyring

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def kinds(self) -> frozenset[str]:
        return self.inner.kinds

    @property
    def default_model(self) -> str:
        return self.inner.default_model

    async def call(self, request: ProviderRequest, model: str, sink: ProgressSink) -> Reply:
        async def attempt(_key: Key) -> Reply:
            return await self.inner.call(request, model, sink)

        return await self.keyring.call(self.inner.name, attempt)

    async def aclose(self) -> None:
        await self.inner.aclose()


def wrap_adapters(adapters: Mapping[str, Adapter], keyring: Keyring) -> dict[str, Adapter]:
    """Every adapter with keys in the keyring wrapped in a ``RotatingAdapter``."""
    have: Sequence[str] = keyring.providers()
    return {n: RotatingAdapter(a, keyring) if n in have else a for n, a in adapters.items()}
