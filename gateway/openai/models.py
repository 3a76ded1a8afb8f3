"""``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's format."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import ProtocolError
from gateway.http import principal
from gateway.openai.chat import catalog_of
from gateway.openai.failures import error_response


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def list_models(request: Request) -> Response:
    try:
        principal(request)
    except ProtocolError as exc:
        return error_response(exc)
    models = [m.as_dict() for m in catalog_of(request).listing()]
    return _json({"object": "list", "data": models})


async def get_model(request: Request) -> Response:
    try:
        principal(request)
    except ProtocolError as exc:
        return error_response(exc)
    model_id = request.path_params["model_id"]
    found = catalog_of(request).get(model_id)
    if found is None:
        return error_response(
            ProtocolError(
                "model_not_found",
                f"The model `{model_id[:200]}` does not exist or you do not have access to it.",
                status=404,
                param="model",
            )
        )
    return _json(found.as_dict())
