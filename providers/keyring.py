"""Several API keys per provider, rotated: on ``AuthFailed`` the key is marked bad and the call
is repeated with the next one (the task never sees the failure while a good key is left); on a
schedule, round-robin. Keys come from the environment (``GEMINI_API_KEY="k1,k2"``, read by
``providers.config``) or from a secrets directory (``/run/secrets/gemini_api_key``: one key
per line, ``#`` comments). A provider's secrets file, when present, replaces its variable.

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import SecretStr

from providers.adapters.base import KEY_IN_USE, Reply
from providers.config import PROVIDERS, SECRET_FILES, ProviderSettings
from providers.errors import AuthFailed, NoUsableKey, SecretsError
from providers.router import Adapter
from providers.types import ProgressSink, ProviderRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_KEYS_PER_PROVIDER = 32
MAX_SECRET_FILE_BYTES = 64 * 1024


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


KeySets = dict[str, tuple[SecretStr, ...]]


# --- sources -------------------------------------------------------------------------------


def _split(value: SecretStr | None) -> tuple[SecretStr, ...]:
    if value is None:
        return ()
    parts = [p.strip() for p in value.get_secret_value().split(",")]
    return tuple(SecretStr(p) for p in parts if p)


def env_keys(settings: ProviderSettings) -> KeySets:
    """Keys from the provider variables; a comma-separated value holds several keys."""
    out: KeySets = {}
    for name in PROVIDERS:
        keys = _split(getattr(settings, SECRET_FILES[name]))
        if keys:
            out[name] = keys
    return out


def _check_key(path: Path, lineno: int, key: str) -> None:
    if any(c.isspace() for c in key):
        raise SecretsError(f"secrets file {path} line {lineno}: a key must not contain spaces")
    if not key.isascii() or not key.isprintable():
        raise SecretsError(f"secrets file {path} line {lineno}: non-printable or non-ASCII key")
    if not 8 <= len(key) <= 1024:
        raise SecretsError(f"secrets file {path} line {lineno}: key length out of range")


def dir_keys(directory: Path) -> KeySets:
    """Keys from ``directory/<provider>_api_key`` files (one per line; blank lines and ``#``
    comments ignored). Other files are not ours and are ignored."""
    out: KeySets = {}
    for name, filename in SECRET_FILES.items():
        path = directory / filename
        if not path.exists():
            continue
        try:
            raw = path.read_bytes()[: MAX_SECRET_FILE_BYTES + 1]
        except OSError as exc:
            raise SecretsError(f"secrets file {path}: cannot read ({exc.strerror})") from None
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise SecretsError(f"secrets file {path}: larger than {MAX_SECRET_FILE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretsError(f"secrets file {path}: not UTF-8 text") from None
        keys: list[SecretStr] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            _check_key(path, lineno, stripped)
            keys.append(SecretStr(stripped))
        if not keys:
            raise SecretsError(f"secrets file {path}: holds no key")
        if len(keys) > MAX_KEYS_PER_PROVIDER:
            raise SecretsError(f"secrets file {path}: more than {MAX_KEYS_PER_PROVIDER} keys")
        out[name] = tuple(keys)
    return out


def default_loader(
    secrets_dir: Path | None, settings: Callable[[], ProviderSettings] = ProviderSettings
) -> Callable[[], KeySets]:
    """Environment keys, overridden per provider by the secrets directory's files."""

    def load() -> KeySets:
        keys = env_keys(settings())
        if secrets_dir is not None and secrets_dir.is_dir():
            keys.update(dir_keys(secrets_dir))
        return keys

    return load


# --- the keyring ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Ring:
    keys: list[Key]
    cursor: int = 0
    bad_until: dict[str, float] = field(default_factory=dict)
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
    ) -> None:
        self._loader = loader
        self._on_alert = on_alert
        self.bad_for_s = bad_for_s
        self._clock = clock
        self._rings: dict[str, _Ring] = {}
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
            old = self._rings.get(provider)
            ring = _Ring(keys)
            if old is not None:  # a key that was rejected stays marked until its time is up
                ring.bad_until = {k: v for k, v in old.bad_until.items() if k in seen}
            rings[provider] = ring
        self._rings = rings
        log.info("keys loaded: %s", {p: len(r.keys) for p, r in rings.items()})
        if not initial and self.on_reload is not None:
            self.on_reload(True)
        return True

    def providers(self) -> list[str]:
        return [p for p, r in self._rings.items() if r.keys]

    def key_ids(self, provider: str) -> list[str]:
        ring = self._rings.get(provider)
        return [k.id for k in ring.keys] if ring else []

    # --- selection -----------------------------------------------------------------------

    def _usable(self, ring: _Ring, key: Key) -> bool:
        return ring.bad_until.get(key.id, 0.0) <= self._clock()

    def current(self, provider: str) -> Key:
        """The key to use now: the one at the cursor, skipping keys marked bad."""
        ring = self._rings.get(provider)
        if ring is None or not ring.keys:
            raise NoUsableKey(f"no API key configured for {provider}", provider=provider)
        n = len(ring.keys)
        for step in range(n):
            key = ring.keys[(ring.cursor + step) % n]
            if self._usable(ring, key):
                ring.cursor = (ring.cursor + step) % n
                return key
        raise NoUsableKey(f"every API key of {provider} was rejected", provider=provider)

    def rotate(self, provider: str) -> None:
        """Scheduled round-robin: move the provider to its next key."""
        ring = self._rings.get(provider)
        if ring is not None and ring.keys:
            ring.cursor = (ring.cursor + 1) % len(ring.keys)

    def mark_failed(self, provider: str, kid: str) -> None:
        """The provider rejected key ``kid``: mark it bad and move on to the next."""
        ring = self._rings.get(provider)
        if ring is None or ring.bad_until.get(kid, 0.0) > self._clock():
            return  # concurrent calls saw the same rejection: mark (and alert) once
        ring.bad_until[kid] = self._clock() + self.bad_for_s
        log.warning("%s: key %s rejected; marked bad for %.0f s", provider, kid, self.bad_for_s)
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
        """``fn(key)`` with the current key; on ``AuthFailed`` the key is marked bad and ``fn``
        runs again with the next one, until a key works or none is left (then the last
        ``AuthFailed`` is raised)."""
        last: AuthFailed | None = None
        tried: set[str] = set()
        while True:
            try:
                key = self.current(provider)
            except NoUsableKey as exc:
                if last is not None:
                    raise last from exc
                raise
            if key.id in tried:
                assert last is not None
                raise last
            tried.add(key.id)
            token = KEY_IN_USE.set(key.secret)
            try:
                return await fn(key)
            except AuthFailed as exc:
                last = exc
                self.mark_failed(provider, key.id)
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
        last = _signature(directory)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            now = _signature(directory)
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


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    found = []
    for filename in SECRET_FILES.values():
        try:
            st = (directory / filename).stat()
        except OSError:
            continue
        found.append((filename, st.st_mtime_ns, st.st_size))
    return tuple(found)


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
