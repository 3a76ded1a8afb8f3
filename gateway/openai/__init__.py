"""The OpenAI-compatible API on the gateway's port (docs/openai.md): ``POST
/v1/chat/completions`` (streamed or not) and ``GET /v1/models[/{id}]``, with the gateway's
bearer tokens as the SDK's ``api_key``. Each request is one task (``x-aiis-task-id``).

``schema`` (the request, checked) → ``catalog`` (which models we route) → ``chat`` (submit,
follow the task with ``follow``, answer; ``shared`` counts the requests that share a task
through an ``Idempotency-Key``) → ``failures`` (OpenAI's error shape and statuses).
"""

from __future__ import annotations

from starlette.routing import Route

from gateway.openai.catalog import Catalog
from gateway.openai.chat import chat_completions
from gateway.openai.models import get_model, list_models

__all__ = ["Catalog", "routes"]


def routes() -> list[Route]:
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    ]
