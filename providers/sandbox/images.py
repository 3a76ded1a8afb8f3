"""Unsplash ``GET /search/photos`` and Pexels ``GET /v1/search`` as the sandbox answers them:
deterministic photos from the query, the providers' rate-limit headers and error bodies."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from providers.errors import BadInput
from providers.sandbox.common import RETRY_S, Call, json_response
from providers.sandbox.server import Request, Response


def _photo_ids(query: str, count: int) -> list[str]:
    seed = hashlib.sha256(query.encode()).hexdigest()
    return [f"{seed[:10]}{i:02d}" for i in range(count)]


def _query_call(request: Request, path: str, expected: str, default: int, cap: int) -> Call:
    if request.method != "GET" or path != expected:
        raise LookupError(path)
    query = request.query.get("query", "").strip()
    if not query:
        raise BadInput("query is missing")
    try:
        per_page = max(1, min(int(request.query.get("per_page", default)), cap))
    except ValueError as exc:
        raise BadInput("per_page must be a number") from exc
    call = Call(model="search", stream=False, input_text=query, last_user=query)
    call.extra["per_page"] = per_page
    return call


class Unsplash:
    name = "unsplash"

    def key(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.startswith("Client-ID "):
            return auth[len("Client-ID ") :]
        return request.query.get("client_id")

    def parse(self, request: Request, path: str) -> Call:
        return _query_call(request, path, "/search/photos", 10, 30)

    def ok(self, call: Call) -> dict[str, Any]:
        query = call.last_user
        ids = _photo_ids(query, int(str(call.extra["per_page"])))
        return {
            "total": 133,
            "total_pages": 14,
            "results": [
                {
                    "id": pid,
                    "width": 4000 + i,
                    "height": 3000,
                    "color": "#60544D",
                    "description": f"{query} #{i}",
                    "alt_description": f"a photo of {query}",
                    "urls": {
                        k: f"https://images.unsplash.com/photo-{pid}?w={w}"
                        for k, w in (
                            ("raw", 0),
                            ("full", 4000),
                            ("regular", 1080),
                            ("small", 400),
                            ("thumb", 200),
                        )
                    },
                    "links": {
                        "self": f"https://api.unsplash.com/photos/{pid}",
                        "html": f"https://unsplash.com/photos/{pid}",
                        "download_location": f"https://api.unsplash.com/photos/{pid}/download",
                    },
                    "user": {
                        "id": "u" + pid,
                        "username": "sandbox",
                        "name": "Sandbox Photographer",
                        "links": {"html": "https://unsplash.com/@sandbox"},
                    },
                }
                for i, pid in enumerate(ids)
            ],
        }

    def limit_headers(self, exhausted: bool) -> list[tuple[str, str]]:
        return [
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "0" if exhausted else "4999"),
        ]

    def error(self, fault: str, key: str) -> Response:
        def err(code: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
            return json_response(code, {"errors": [message]}, headers)

        if fault == "rate_limit":
            return Response(
                403,
                [("content-type", "text/plain"), *self.limit_headers(True)],
                b"Rate Limit Exceeded",
            )
        if fault in ("credits", "spend_limit", "billing"):
            return err(402, "Payment required: the application's plan is exhausted")
        if fault in ("unavailable", "overloaded"):
            return err(503, "Service Unavailable")
        if fault in ("server_error", "midstream_error"):
            return err(500, "Internal Server Error")
        if fault in ("bad_key", "no_key"):
            return err(401, f"OAuth error: The access token is invalid ({key})")
        if fault == "not_found":
            return err(404, "Not Found")
        return err(400, "query is missing")


class Pexels:
    name = "pexels"

    def key(self, request: Request) -> str | None:
        return request.headers.get("authorization")

    def parse(self, request: Request, path: str) -> Call:
        return _query_call(request, path, "/v1/search", 15, 80)

    def ok(self, call: Call) -> dict[str, Any]:
        query = call.last_user
        ids = _photo_ids(query, int(str(call.extra["per_page"])))
        return {
            "total_results": 8000,
            "page": 1,
            "per_page": len(ids),
            "photos": [
                {
                    "id": int(pid[:8], 16),
                    "width": 5000 + i,
                    "height": 3333,
                    "url": f"https://www.pexels.com/photo/{pid}/",
                    "photographer": "Sandbox Pexels",
                    "photographer_url": "https://www.pexels.com/@sandbox",
                    "photographer_id": 1,
                    "avg_color": "#978E82",
                    "src": {
                        k: f"https://images.pexels.com/photos/{pid}/{k}.jpeg"
                        for k in (
                            "original",
                            "large2x",
                            "large",
                            "medium",
                            "small",
                            "portrait",
                            "landscape",
                            "tiny",
                        )
                    },
                    "liked": False,
                    "alt": f"{query} #{i}",
                }
                for i, pid in enumerate(ids)
            ],
            "next_page": "https://api.pexels.com/v1/search/?page=2",
        }

    def limit_headers(self, exhausted: bool) -> list[tuple[str, str]]:
        return [
            ("x-ratelimit-limit", "20000"),
            ("x-ratelimit-remaining", "0" if exhausted else "19999"),
            ("x-ratelimit-reset", str(int(time.time()) + RETRY_S)),
        ]

    def error(self, fault: str, key: str) -> Response:
        def err(code: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
            return json_response(code, {"error": message}, headers)

        if fault == "rate_limit":
            return err(429, "Rate limit exceeded", self.limit_headers(True))
        if fault in ("credits", "spend_limit", "billing"):
            return err(402, "Payment required")
        if fault in ("unavailable", "overloaded"):
            return err(503, "Service Unavailable")
        if fault in ("server_error", "midstream_error"):
            return err(500, "Internal Server Error")
        if fault in ("bad_key", "no_key"):
            return err(401, f"Invalid API key {key}")
        if fault == "not_found":
            return err(404, "Not Found")
        return err(400, "query is missing")
