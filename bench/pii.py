"""PII detector quality on the labelled corpus: precision and recall per category and overall.

    python bench/pii.py [--corpus tests/data/pii_corpus.jsonl] [--show-errors]

A detection counts as a true positive only when its span and category match a label exactly;
everything else is a false positive, every unmatched label a false negative. Also prints the
detector's throughput in characters per second over the corpus.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.pii import Category, detect

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def score(rows: list[dict[str, Any]], show_errors: bool = False) -> dict[str, Counter[str]]:
    """TP/FP/FN counts per category (key ``ALL`` for the total)."""
    counts: dict[str, Counter[str]] = {c.value: Counter() for c in Category}
    counts["ALL"] = Counter()
    for row in rows:
        text = row["text"]
        want = {(s["start"], s["end"], s["category"]) for s in row["spans"]}
        got = {(s.start, s.end, s.category.value) for s in detect(text)}
        for outcome, spans in (("tp", want & got), ("fp", got - want), ("fn", want - got)):
            for _, _, cat in spans:
                counts[cat][outcome] += 1
                counts["ALL"][outcome] += 1
        if show_errors:
            for s, e, cat in sorted(got - want):
                print(f"FP {cat:12} {text[s:e]!r:40} in {text!r}")
            for s, e, cat in sorted(want - got):
                print(f"FN {cat:12} {text[s:e]!r:40} in {text!r}")
    return counts


def ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "  -  "


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "tests/data/pii_corpus.jsonl")
    parser.add_argument("--show-errors", action="store_true")
    args = parser.parse_args()
    rows = load(args.corpus)
    counts = score(rows, args.show_errors)
    negatives = sum(1 for r in rows if not r["spans"])
    print(f"corpus: {len(rows)} lines, {negatives} without PII (hard negatives and plain text)")
    print(
        f"{'category':12} {'labels':>6} {'tp':>5} {'fp':>4} {'fn':>4} "
        f"{'precision':>9} {'recall':>7}"
    )
    for cat, c in counts.items():
        labels = c["tp"] + c["fn"]
        print(
            f"{cat:12} {labels:6d} {c['tp']:5d} {c['fp']:4d} {c['fn']:4d} "
            f"{ratio(c['tp'], c['tp'] + c['fp']):>9} {ratio(c['tp'], labels):>7}"
        )
    chars = sum(len(r["text"]) for r in rows)
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        for r in rows:
            detect(r["text"])
    elapsed = time.perf_counter() - start
    print(f"throughput: {chars * rounds / elapsed / 1e6:.2f} M chars/s ({chars} chars x {rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
