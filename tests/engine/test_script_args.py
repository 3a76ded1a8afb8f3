"""The typed door to the store's scripts: each script's argument positions live in one place."""

from __future__ import annotations

import re
from importlib import resources

from engine.core.script_args import (
    CommitOp,
    SubmitItem,
    build_commit_args,
    build_submit_args,
    parse_commit_reply,
    parse_fetch_reply,
    parse_submit_reply,
)


def _lua(name: str) -> str:
    return (resources.files("engine.core") / "lua" / f"{name}.lua").read_text()


def test_the_python_tuples_have_the_strides_the_scripts_read() -> None:
    """submit.lua reads 12 values per task and commit.lua 7 per op: SubmitItem and CommitOp
    have exactly those fields, so a field added on one side only fails here."""
    submit = re.search(r"ARGV\[7 \+ i \* (\d+)\]", _lua("submit"))
    commit = re.search(r"ARGV\[7 \+ i \* (\d+)\]", _lua("commit"))
    assert submit is not None and int(submit.group(1)) == len(SubmitItem._fields)
    assert commit is not None and int(commit.group(1)) == len(CommitOp._fields)
    fetch_out = re.findall(r"out\[#out \+ 1\] = (?:s\[\d\]|recs\[i\])", _lua("fetch"))
    assert len(fetch_out) == 5  # parse_fetch_reply reads 5 values per started task


def test_builders_flatten_in_the_scripts_order_and_parsers_type_the_replies() -> None:
    """build_*_args put the counts first, then every item's fields in order; parse_* type the
    raw replies."""
    item = SubmitItem("t1", "acme", "normal", "", "{}", "{}", "", "", "", "", "", "")
    assert build_submit_args(50, [item]) == [
        50,
        1,
        "t1",
        "acme",
        "normal",
        "",
        "{}",
        "{}",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    assert parse_submit_reply([b"new", b"t1", b"full", b"50"]) == [("new", "t1"), ("full", "50")]
    op = CommitOp("S", "t1", 2, "normal", "1-0", b"{}", "")
    assert build_commit_args([op, op]) == [2, *op, *op]
    assert parse_commit_reply([b"1", 0]) == [1, 0]
    raw = [b"5-0", 1, b"high", b"1-0", b"t1", 3, b"{}", 2, 1]
    got = parse_fetch_reply(raw)
    assert (got.cursor, got.dropped, got.dead) == ("5-0", 2, 1)
    assert [(s.priority, s.entry_id, s.task_id, s.attempt, s.record) for s in got.started] == [
        ("high", "1-0", "t1", 3, b"{}")
    ]


def test_the_small_scripts_replies_are_typed() -> None:
    """cancel's reply names its outcome and the terminal StateCode; renew's lost indices are
    0-based; history's flat field lists become dicts."""
    from engine.core.events import StateCode
    from engine.core.script_args import (
        RenewHeld,
        build_renew_args,
        parse_cancel_reply,
        parse_history_reply,
        parse_renew_reply,
    )

    assert parse_cancel_reply([b"terminal", b"X"]).code is StateCode.DEAD_LETTERED
    assert parse_cancel_reply([b"cancelled", b"queued", b"1-0"]).event_id == "1-0"
    assert parse_cancel_reply([b"missing"]).outcome == "missing"
    held = RenewHeld("t1", 2, "low", "3-0")
    assert build_renew_args([held]) == [1, "t1", 2, "low", "3-0"]
    assert parse_renew_reply([1, 3]) == [0, 2]
    assert parse_history_reply([(b"1-0", [b"type", b"T"])]) == [(b"1-0", {b"type": b"T"})]
    renew = re.search(r"ARGV\[6 \+ i \* (\d+)\]", _lua("renew"))
    assert renew is not None and int(renew.group(1)) == len(RenewHeld._fields)
