"""Cost of a call from its reported usage and the price table in ``data/prices.json``.

Cached input tokens are part of the input count and are charged at the cached price; an unknown
model costs ``None`` (and logs a warning), never a silent 0.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson

from providers.types import Usage

log = logging.getLogger(__name__)

PER_MILLION = 1_000_000
_DATED = re.compile(r"-(\d{4}-?\d{2}-?\d{2}|\d{8}|latest|preview.*|exp.*|\d{3})$")


@dataclass(frozen=True, slots=True)
class Price:
    input: float = 0.0  # USD per 1M input tokens
    output: float = 0.0  # USD per 1M output tokens
    cached_input: float | None = None  # USD per 1M cached input tokens (None: input price)
    per_request: float = 0.0  # USD per call (image search)


class PriceTable:
    """Model name → Price; ``cost(model, usage)`` in USD or None when the model is unknown."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self._prices = prices

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The shipped table, or the one at ``path``."""
        raw = (
            path.read_bytes()
            if path
            else (resources.files("providers").joinpath("data/prices.json").read_bytes())
        )
        models = orjson.loads(raw)["models"]
        return cls({name: Price(**fields) for name, fields in models.items()})

    def max_price(self) -> tuple[float, float, float]:
        """The dearest input, output and per-request prices of the table (an upper bound)."""
        prices = self._prices.values()
        return (
            max((p.input for p in prices), default=0.0),
            max((p.output for p in prices), default=0.0),
            max((p.per_request for p in prices), default=0.0),
        )

    def models(self) -> list[str]:
        """Every model name the table prices."""
        return list(self._prices)

    def lookup(self, model: str) -> Price | None:
        """Exact name, else the name without a ``models/`` prefix or a date/version suffix."""
        name = model.removeprefix("models/")
        if name in self._prices:
            return self._prices[name]
        base = _DATED.sub("", name)
        return self._prices.get(base)

    def cost(self, model: str, usage: Usage, *, requests: int = 1) -> float | None:
        price = self.lookup(model)
        if price is None:
            log.warning("no price for model %r; cost recorded as unknown", model)
            return None
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_price = price.input if price.cached_input is None else price.cached_input
        usd = (
            (usage.input_tokens - cached) * price.input
            + cached * cached_price
            + usage.output_tokens * price.output
        ) / PER_MILLION + requests * price.per_request
        return round(usd, 10)
