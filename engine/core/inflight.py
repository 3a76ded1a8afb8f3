"""A worker process's adaptive in-flight limit (the autoscaler grows and shrinks processes; this
sizes one process's concurrency)."""

from __future__ import annotations


class InFlightLimit:
    """The adaptive in-flight limit of one worker process (AIMD): a quarter less each time a
    provider pushes back (``RateLimited``, ``Overloaded``), one more per limit's worth of
    successes, between ``minimum`` and ``maximum`` (the configured concurrency)."""

    PRESSURE = frozenset({"RateLimited", "Overloaded"})

    def __init__(self, maximum: int, minimum: int | None = None) -> None:
        self.maximum = maximum
        self.minimum = minimum if minimum is not None else max(1, maximum // 16)
        self.value = float(maximum)

    @property
    def current(self) -> int:
        return max(self.minimum, min(self.maximum, int(self.value)))

    def record(self, error_class: str | None) -> None:
        """Feed the outcome of one call (None: success)."""
        if error_class in self.PRESSURE:
            self.value = max(float(self.minimum), self.value * 0.75)
        elif error_class is None and self.value < self.maximum:
            self.value = min(float(self.maximum), self.value + 1.0 / self.value)
