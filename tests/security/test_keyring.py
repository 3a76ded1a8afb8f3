"""Multi-key rotation, reload and secrecy (providers/credentials/keyring.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from providers.adapters.base import Reply
from providers.config import ProviderSettings
from providers.credentials.keyring import (
    KEY_IN_USE,
    Key,
    KeyAlert,
    KeyRejected,
    Keyring,
    RotatingAdapter,
    default_loader,
    dir_keys,
    env_keys,
)
from providers.errors import AuthFailed, NoUsableKey, RateLimited, SecretsError
from providers.router import Router
from providers.types import ProgressSink, ProviderRequest, ProviderResult

K1 = "fake-gemini-key-ONE-0000000000"
K2 = "fake-gemini-key-TWO-1111111111"
K3 = "fake-gemini-key-THREE-22222222"


def static(sets: dict[str, list[str]]) -> dict[str, tuple[SecretStr, ...]]:
    return {p: tuple(SecretStr(k) for k in ks) for p, ks in sets.items()}


def test_env_keys_split_commas() -> None:
    """GEMINI_API_KEY="k1, k2" yields two keys; unset providers yield none."""
    settings = ProviderSettings.model_validate({"GEMINI_API_KEY": f"{K1}, {K2},"})
    keys = env_keys(settings)
    assert [k.get_secret_value() for k in keys["gemini"]] == [K1, K2]
    assert "openai" not in keys


def test_secrets_dir_overrides_env(tmp_path: Path) -> None:
    """A provider's secrets file (one key per line, comments ignored) replaces its variable."""
    (tmp_path / "gemini_api_key").write_text(f"# rotated 2024-05\n{K2}\n\n{K3}\n")
    settings = ProviderSettings.model_validate(
        {"GEMINI_API_KEY": K1, "OPENAI_API_KEY": "fake-openai-key-1"}
    )
    keys = default_loader(tmp_path, lambda: settings)()
    assert [k.get_secret_value() for k in keys["gemini"]] == [K2, K3]
    assert [k.get_secret_value() for k in keys["openai"]] == ["fake-openai-key-1"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "holds no key"),
        (b"# only a comment\n", "holds no key"),
        (b"fake key with spaces\n", "line 1: a key must not contain spaces"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        ("fake-ключ-0000000".encode(), "line 1: non-printable or non-ASCII"),
    ],
)
def test_malformed_secrets_file_is_a_clear_error(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    """A malformed file raises SecretsError naming the file and the problem, not the content."""
    (tmp_path / "gemini_api_key").write_bytes(content)
    with pytest.raises(SecretsError, match=reason) as info:
        dir_keys(tmp_path)
    assert "gemini_api_key" in str(info.value)
    body = content.decode(errors="ignore").strip()
    if body:
        assert body not in str(info.value)


async def test_rotation_on_auth_failed_without_failing_the_call() -> None:
    """Key 1 is rejected (401): the call is repeated with key 2 and succeeds; key 1 is marked."""
    alerts: list[KeyAlert] = []
    ring = Keyring(lambda: static({"gemini": [K1, K2]}), on_alert=alerts.append)
    used: list[str] = []

    async def fake_adapter(key: Key) -> str:
        secret = KEY_IN_USE.get()
        assert secret is not None and secret == key.secret
        used.append(secret.get_secret_value())
        if secret.get_secret_value() == K1:
            raise AuthFailed("401 invalid key", provider="gemini", status=401)
        return "ok"

    assert await ring.call("gemini", fake_adapter) == "ok"
    assert used == [K1, K2]
    assert await ring.call("gemini", fake_adapter) == "ok"
    assert used == [K1, K2, K2]  # the bad key is skipped from now on
    assert [a.kind for a in alerts] == ["key_rejected"]
    assert alerts[0].key_ids == (ring.key_ids("gemini")[0],)
    assert KEY_IN_USE.get() is None


async def test_every_key_rejected_raises_and_alerts_once() -> None:
    """All keys rejected once: KeyRejected (retried); rejected again: AuthFailed, then
    NoUsableKey, with one exhausted alert."""
    alerts: list[KeyAlert] = []
    now = [0.0]
    ring = Keyring(
        lambda: static({"gemini": [K1, K2]}), on_alert=alerts.append, clock=lambda: now[0]
    )

    async def always_401(key: Key) -> str:
        raise AuthFailed(f"401 for {key.id}", provider="gemini", status=401)

    with pytest.raises(KeyRejected) as first:
        await ring.call("gemini", always_401)
    assert first.value.retryable
    now[0] = 1.0
    with pytest.raises(AuthFailed) as second:
        await ring.call("gemini", always_401)
    assert not second.value.retryable
    with pytest.raises(NoUsableKey):
        await ring.call("gemini", always_401)
    kinds = [a.kind for a in alerts]
    assert kinds.count("provider_keys_exhausted") == 1
    assert kinds.count("key_rejected") == 2


async def test_other_errors_do_not_rotate() -> None:
    """A rate limit is not the key's fault: it propagates and the key stays in use."""
    ring = Keyring(lambda: static({"gemini": [K1, K2]}))
    first = ring.current("gemini").id

    async def limited(key: Key) -> str:
        raise RateLimited("429", provider="gemini")

    with pytest.raises(RateLimited):
        await ring.call("gemini", limited)
    assert ring.current("gemini").id == first


def test_bad_key_comes_back_after_its_time() -> None:
    """A key marked bad is skipped for bad_for_s, then used again."""
    now = [0.0]
    ring = Keyring(lambda: static({"gemini": [K1, K2]}), bad_for_s=10, clock=lambda: now[0])
    k1 = ring.current("gemini")
    ring.mark_failed("gemini", k1.id)
    assert ring.current("gemini").id != k1.id
    now[0] = 11.0
    ring.rotate("gemini")
    assert ring.current("gemini").id == k1.id


def test_scheduled_rotation_is_round_robin() -> None:
    """rotate() walks the keys in order and wraps around."""
    ring = Keyring(lambda: static({"gemini": [K1, K2, K3]}))
    seen = []
    for _ in range(4):
        seen.append(ring.current("gemini").secret.get_secret_value())
        ring.rotate("gemini")
    assert seen == [K1, K2, K3, K1]


def test_reload_swaps_keys_and_malformed_keeps_last_good(tmp_path: Path) -> None:
    """reload() picks up a new file; a malformed file keeps the last good keys and alerts."""
    alerts: list[KeyAlert] = []
    path = tmp_path / "gemini_api_key"
    path.write_text(f"{K1}\n")
    ring = Keyring(lambda: dir_keys(tmp_path), on_alert=alerts.append)
    assert ring.current("gemini").secret.get_secret_value() == K1
    path.write_text(f"{K2}\n{K3}\n")
    assert ring.reload() is True
    assert ring.current("gemini").secret.get_secret_value() == K2
    path.write_text("not a key\n")
    assert ring.reload() is False
    assert ring.current("gemini").secret.get_secret_value() == K2
    assert alerts[-1].kind == "secrets_reload_failed"


def test_malformed_at_start_raises(tmp_path: Path) -> None:
    """With no last good set to fall back on, a malformed file at start is an error."""
    (tmp_path / "gemini_api_key").write_text("")
    with pytest.raises(SecretsError):
        Keyring(lambda: dir_keys(tmp_path))


async def test_watch_files_reloads_on_change(tmp_path: Path) -> None:
    """watch_files notices a rewritten secrets file and reloads without a restart."""
    path = tmp_path / "gemini_api_key"
    path.write_text(f"{K1}\n")
    ring = Keyring(lambda: dir_keys(tmp_path))
    stop = asyncio.Event()
    watcher = asyncio.create_task(ring.watch_files(tmp_path, stop, interval_s=0.02))
    await asyncio.sleep(0.05)
    path.write_text(f"{K3}\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    for _ in range(100):
        if ring.current("gemini").secret.get_secret_value() == K3:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await watcher
    assert ring.current("gemini").secret.get_secret_value() == K3


async def test_sighup_reloads(tmp_path: Path) -> None:
    """With install_sighup, a SIGHUP to the process reloads the keys."""
    import signal

    path = tmp_path / "gemini_api_key"
    path.write_text(f"{K1}\n")
    ring = Keyring(lambda: dir_keys(tmp_path))
    loop = asyncio.get_running_loop()
    ring.install_sighup(loop)
    try:
        path.write_text(f"{K2}\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if ring.current("gemini").secret.get_secret_value() == K2:
                break
            await asyncio.sleep(0.01)
        assert ring.current("gemini").secret.get_secret_value() == K2
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


class _FakeAdapter:
    name = "gemini"
    kinds = frozenset({"text"})
    default_model = "gemini-test"

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def call(self, request: ProviderRequest, model: str, sink: ProgressSink) -> Reply:
        secret = KEY_IN_USE.get()
        assert secret is not None
        self.keys.append(secret.get_secret_value())
        if secret.get_secret_value() == K1:
            raise AuthFailed("401: API key not valid", provider="gemini", status=401)
        return Reply(ProviderResult(provider="gemini", model=model, text="hi"))

    async def aclose(self) -> None:
        return None


class _Sink:
    def __init__(self) -> None:
        self.notices: list[str] = []

    def delta(self, text: str) -> None:
        return None

    def notice(self, kind: str, data: object) -> None:
        self.notices.append(kind)


async def test_router_never_sees_the_rejected_key() -> None:
    """Through RotatingAdapter the router gets a success, with no fallback notice."""
    inner = _FakeAdapter()
    ring = Keyring(lambda: static({"gemini": [K1, K2]}))
    router = Router({"gemini": RotatingAdapter(inner, ring)}, {"text": ["gemini"]})
    sink = _Sink()
    result = await router.process(ProviderRequest("t1", "acme", "text", prompt="hello"), sink)
    assert result.text == "hi"
    assert inner.keys == [K1, K2]
    assert "fallback" not in sink.notices


async def test_no_key_string_in_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, nothing the keyring logs, alerts or raises contains a key string."""
    caplog.set_level(logging.DEBUG)
    alerts: list[KeyAlert] = []
    ring = Keyring(lambda: static({"gemini": [K1, K2]}), on_alert=alerts.append)

    async def always_401(key: Key) -> str:
        raise AuthFailed("401", provider="gemini", status=401)

    errors: list[str] = []
    for _ in range(2):
        try:
            await ring.call("gemini", always_401)
        except AuthFailed as exc:
            errors.append(repr(exc) + str(exc))
    ring.reload()
    texts = [caplog.text, *errors, repr(alerts), repr(static({"g": [K1]}))]
    texts.append(repr(Key("gemini", "gemini:x", SecretStr(K1))))
    assert caplog.records, "the keyring logged nothing, so the check proves nothing"
    for text in texts:
        for key in (K1, K2):
            assert key not in text


async def test_a_confirmed_bad_key_does_not_condemn_a_suspect_one() -> None:
    """Key 2 suspect, key 1 rejected for the first time and key 2 again (confirmed bad) in one
    call: key 1 is only suspect, so the call is retried (KeyRejected), not failed."""
    now = [0.0]
    ring = Keyring(lambda: static({"gemini": [K1, K2]}), clock=lambda: now[0])
    k2 = ring.key_ids("gemini")[1]
    ring.rejected("gemini", k2, taken_at=0.0)  # suspect since t=0
    now[0] = 1.0

    async def always_401(key: Key) -> str:
        raise AuthFailed("401", provider="gemini", status=401)

    with pytest.raises(KeyRejected):
        await ring.call("gemini", always_401)
    assert ring.current("gemini").id == ring.key_ids("gemini")[0]
