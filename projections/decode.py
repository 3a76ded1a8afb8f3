"""Log entries to envelopes, fast: replay is bound by decoding.

An entry arrives as Redis sends it (``[id, [k, v, …]]``, bytes, read without redis-py's reply
dicts), as redis-py's ``(id, {k: v})`` or from an archive segment (str). The common case — a
well-formed event of the current schema version, with the fields in the order
``engine.core.mapper.entry_fields`` writes them — is decoded here without per-field conversions;
anything else (old versions to upcast, unknown types, newer versions, malformed entries) goes to
``engine.core.mapper.envelope``, which owns versions and upcasting, so both give the same
envelope or the same error. ``tests/projections/test_decode.py`` holds the two to that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.core import mapper
from engine.core.events import EVENT_TYPES
from engine.errors import EventDecodeError
from projections.view import Envelope

# the field names at the even places of a flat entry, as mapper.entry_fields writes them
_LAYOUT = [b"type", b"task", b"tenant", b"ts", b"v", b"data"]
_TYPES = {name.encode(): name for name in EVENT_TYPES}


def envelope(eid: str, fields: Sequence[Any] | Mapping[Any, Any]) -> Envelope:
    """The envelope of the entry ``eid``, or ``EventDecodeError`` naming it."""
    if type(fields) is list:
        if fields[::2] == _LAYOUT:
            name = _TYPES.get(fields[1])
            if name is not None:
                try:
                    found = mapper.current_envelope(
                        eid, name, int(fields[9]), fields[3], fields[5], fields[7], fields[11]
                    )
                    if found is not None:
                        return found
                except mapper.FAST_PATH_ERRORS:
                    pass
        return _full(eid, dict(zip(fields[::2], fields[1::2], strict=False)))
    if type(fields) is dict and type(name := fields.get("type")) is str:
        try:  # an archive entry
            found = mapper.current_envelope(
                eid,
                name,
                int(fields.get("v", "1")),
                fields["task"],
                fields["tenant"],
                fields["ts"],
                fields["data"],
            )
            if found is not None:
                return found
        except mapper.FAST_PATH_ERRORS:
            pass
    return _full(eid, fields)


def _full(eid: str, fields: Any) -> Envelope:
    try:
        return mapper.envelope(eid, fields)
    except EventDecodeError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:  # e.g. bytes that are not UTF-8
        raise EventDecodeError(eid, f"malformed entry ({exc!r})") from exc
