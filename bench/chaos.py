"""The full chaos run: 5,000 tasks through several worker processes against the sandbox with
~20 % faults, SIGKILLing a random worker every few seconds, restarting Redis (AOF) and the
gateway once, with a WebSocket subscriber resuming after each cut.

    python bench/chaos.py [--tasks 5000] [--workers 4] [--fault-rate 0.2] [--kill-every 3]
    python bench/chaos.py --cluster [--partitions 4]   # on a 3-master Redis Cluster (AOF on):
                                                      # the Redis restart is one master's

Exits 1 when any guarantee failed; prints the counts of what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos_harness import ChaosConfig, run_chaos


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    parser.add_argument(
        "--partitions", type=int, default=None, help="AIIS_PARTITIONS (default 4 with --cluster)"
    )
    args = parser.parse_args()
    cfg = ChaosConfig(
        tasks=args.tasks,
        workers=args.workers,
        concurrency=args.concurrency,
        fault_rate=args.fault_rate,
        kill_every_s=args.kill_every,
        seed=args.seed,
        timeout_s=args.timeout,
        cluster=args.cluster,
        partitions=args.partitions or (4 if args.cluster else 1),
    )
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(run_chaos(Path(tmp), cfg))
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
