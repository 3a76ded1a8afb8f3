"""Summary of a probe directory (``bench/probe/sitecustomize.py``) over the time events flowed:
the collections of ≥ 10 ms by generation, the slowest pushes and their stages.

    python bench/probe/summary.py DIR
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(out_dir: Path) -> None:
    lines = (out_dir / "loop.log").read_text().splitlines()
    first = float(next(line for line in lines if line.startswith("FIRST")).split()[1])
    last = float([line for line in lines if line.startswith("LAST")][-1].split()[1])
    print(f"events flowed {last - first:.1f} s")
    by_gen: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        if line.startswith("GC "):
            _, at, gen, ms = line.split()
            if first <= float(at) <= last:
                by_gen[gen].append(float(ms))
    for gen, times in sorted(by_gen.items()):
        print(f"collections {gen} >= 10 ms: {len(times)}, max {max(times):.1f} ms")
    pushes = [json.loads(line) for line in (out_dir / "pushes.jsonl").read_text().splitlines()]
    flowing = sorted(
        (p for p in pushes if first <= p["t0"] <= last), key=lambda p: p.get("putN", 0)
    )
    print(f"pushes while events flowed: {len(flowing)}; the slowest (ms from the start):")
    for p in flowing[-4:]:
        print("  " + "  ".join(f"{k} {v}" for k, v in p.items() if k != "t0"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
