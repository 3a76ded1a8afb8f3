"""Where keys come from: the provider variables (``GEMINI_API_KEY="k1,k2"``, read by
``providers.config``) and a secrets directory (``/run/secrets/gemini_api_key``: one key per
line, ``#`` comments). A provider's secrets file, when present, replaces its variable. A
malformed source raises ``SecretsError``, whose message names the file and line, never the
content. ``providers.credentials.keyring`` holds, rotates and reloads what these return.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from providers.config import PROVIDERS, SECRET_FILES, ProviderSettings
from providers.errors import SecretsError

MAX_KEYS_PER_PROVIDER = 32
MAX_SECRET_FILE_BYTES = 64 * 1024


KeySets = dict[str, tuple[SecretStr, ...]]


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
    secrets_dir: Path | None, settings: Callable[[], ProviderSettings]
) -> Callable[[], KeySets]:
    """Environment keys, overridden per provider by the secrets directory's files."""

    def load() -> KeySets:
        keys = env_keys(settings())
        if secrets_dir is not None and secrets_dir.is_dir():
            keys.update(dir_keys(secrets_dir))
        return keys

    return load


def files_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """The secrets files' names, mtimes and sizes: a change means "reload"."""
    found = []
    for filename in SECRET_FILES.values():
        try:
            st = (directory / filename).stat()
        except OSError:
            continue
        found.append((filename, st.st_mtime_ns, st.st_size))
    return tuple(found)
