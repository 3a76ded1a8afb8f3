"""Engine throughput on a real 3-master Redis Cluster with 1, 2 and 4 partitions, in one run.

    python bench/partitions.py [--tasks 20000] [--workers 2]

Each partition is one hash tag, so one slot, so one master: more partitions spread the event
log and work streams over more Redis processes. Prints tasks/s per partition count and the
scaling ratio against one partition.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import run_engine

from tests.cluster import LocalCluster


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=512)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp))
        url = cluster.start()
        try:
            for partitions in (1, 2, 4):
                results[partitions] = asyncio.run(
                    run_engine(
                        url,
                        args.tasks,
                        args.workers,
                        args.concurrency,
                        partitions=partitions,
                        cluster=True,
                        namespace=f"parts{partitions}",
                    )
                )
        finally:
            cluster.stop()
    print(
        f"N = {args.tasks} tasks, echo provider, {args.workers} worker processes, "
        f"3-master Redis Cluster on loopback, {os.cpu_count()} cores"
    )
    print(
        f"{'partitions':<12}{'tasks/s':>10}{'cmds/task':>11}{'p50 ms':>9}{'p99 ms':>9}{'vs 1':>7}"
    )
    base = results[1]["tasks_s"]
    for partitions, r in results.items():
        print(
            f"{partitions:<12}{r['tasks_s']:>10.0f}{r['cmds']:>11.2f}{r['p50']:>9.0f}"
            f"{r['p99']:>9.0f}{r['tasks_s'] / base:>7.2f}"
        )


if __name__ == "__main__":
    main()
