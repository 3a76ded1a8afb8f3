"""The models ``model`` may name: ``auto`` (the configured chat chain, with fallback), a model id
we route (the price table's text models and each provider's configured default), or
``provider/model`` for a configured text provider. Anything else is 404 ``model_not_found``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from providers.config import TEXT_PROVIDERS, ProviderSettings
from providers.pricing import PriceTable
from providers.router import provider_for_model

AUTO = "auto"
OWNERS = {"gemini": "google", "openai": "openai", "anthropic": "anthropic"}


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    provider: str | None  # None: ``auto``

    def as_dict(self) -> dict[str, object]:
        owner = OWNERS.get(self.provider, self.provider) if self.provider else "aiis"
        return {"id": self.id, "object": "model", "created": 0, "owned_by": owner}


class Catalog:
    """Model ids → the route a task takes (its ``provider``/``model`` params)."""

    def __init__(self, chain: Sequence[str], defaults: dict[str, str], priced: Sequence[str]):
        self.chain = tuple(p for p in chain if p in TEXT_PROVIDERS)
        ids = [*defaults.values(), *priced]
        self.models: dict[str, Model] = {AUTO: Model(AUTO, None)}
        for model in ids:
            provider = provider_for_model(model)
            if provider in self.chain and model not in self.models:
                self.models[model] = Model(model, provider)

    @classmethod
    def from_settings(cls, settings: ProviderSettings, prices: PriceTable | None = None) -> Catalog:
        return cls(
            settings.chat_chain,
            {p: settings.provider(p).model for p in TEXT_PROVIDERS},
            (prices or PriceTable.load()).models(),
        )

    @classmethod
    def builtin(cls) -> Catalog:
        """The catalog of the default provider settings (a gateway not given any)."""
        fields = ProviderSettings.model_fields
        chain = fields["chat_chain"].default
        defaults = {p: str(fields[f"{p}_model"].default) for p in TEXT_PROVIDERS}
        return cls(chain, defaults, PriceTable.load().models())

    def route(self, model: str) -> dict[str, str] | None:
        """The task params of ``model``, or None when we do not serve it."""
        if model == AUTO:
            return {}
        if model in self.models:
            return {"model": model}
        provider, sep, name = model.partition("/")
        if sep and provider in self.chain and name:
            return {"provider": provider, "model": name}
        return None

    def get(self, model: str) -> Model | None:
        found = self.models.get(model)
        if found is not None:
            return found
        provider, sep, name = model.partition("/")
        if sep and provider in self.chain and name:
            return Model(model, provider)
        return None

    def listing(self) -> list[Model]:
        return list(self.models.values())
