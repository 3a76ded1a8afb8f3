"""``python -m providers.sandbox --port N --latency S --fault-rate R [--seed N]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from providers.sandbox import launch


async def _main(args: argparse.Namespace) -> None:
    sandbox = await launch(
        args.host,
        args.port,
        latency_s=args.latency,
        fault_rate=args.fault_rate,
        seed=args.seed,
        bad_keys=args.bad_key or (),
    )
    print(f"sandbox listening on {sandbox.url}", flush=True)
    for name, value in sandbox.env().items():
        print(f"export {name}={value}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m providers.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of random faults")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--bad-key", action="append", help="a key the sandbox rejects")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
