"""The OpenAPI document, made to say what the routes really answer.

FastAPI documents a 422 with its own validation body on every route with a request model,
while our errors come in one shape per API (``ErrorBody`` on the native routes, OpenAI's on
/v1, where a malformed body is a 400 as OpenAI answers it), and the statuses auth, limits and
outages produce are not declared by any route. This rewrites the error responses of each
operation from one table, so clients and schema-driven tests can trust the page.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.schemas import ErrorBody

_WHY = {
    400: "bad request: malformed body (/v1), or a prompt past the model's context",
    401: "missing or unknown API key, or admin token",
    403: "revoked API key, wrong admin token, or admin routes disabled",
    404: "unknown task, model, level or request",
    413: "request body or input too large",
    422: "the body or a parameter is invalid; `errors` names each field",
    429: "over the key's requests-per-minute limit; see Retry-After",
    503: "no level could answer, the gateway is overloaded, or the store is unreachable; "
    "see Retry-After where sent",
}

_CLIENT = (401, 403, 429, 503)  # every route behind an API key can answer these
_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/generate"): (400, 404, 413, 422, *_CLIENT),
    ("post", "/feedback"): (404, 413, 422, *_CLIENT),
    ("post", "/v1/chat/completions"): (400, 404, 413, *_CLIENT),
    ("get", "/v1/models"): _CLIENT,
    ("get", "/admin/stats"): (401, 403, 422, 503),
    ("get", "/admin/series"): (401, 403, 422, 503),
    ("get", "/admin/tasks"): (401, 403, 503),
    ("post", "/admin/tasks/{task}/policy"): (401, 403, 404, 413, 422, 503),
    ("get", "/readyz"): (503,),
}

_OPENAI_ERROR = {
    "type": "object",
    "title": "OpenAIError",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["integer", "string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}


_CHAT_COMPLETION = {
    "type": "object",
    "title": "ChatCompletion",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "cascade": {"type": "object", "description": "how the gateway answered"},
    },
}


_SSE_EVENT = {
    "type": "object",
    "title": "ServerSentEvent",
    "description": "one event: `data` is a chat.completion.chunk, an error, or [DONE]",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps["ErrorBody"] = ErrorBody.model_json_schema()
    comps["OpenAIError"] = _OPENAI_ERROR
    comps["ChatCompletion"] = _CHAT_COMPLETION
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    chat["responses"]["200"] = {
        "description": "the answer; with stream: true, server-sent chat.completion.chunk "
        "events, the last carrying `cascade` (level, degraded, cached), or an `error` event "
        "when the answer broke off mid-stream",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
            "text/event-stream": {"schema": _SSE_EVENT},
        },
    }
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            codes = _ERRORS.get((method, path))
            if codes is None:
                continue
            ref = "OpenAIError" if path.startswith("/v1/") else "ErrorBody"
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for code in codes:
                body = {"$ref": f"#/components/schemas/{ref}"}
                if path == "/readyz":
                    body = {"type": "object"}
                responses[str(code)] = {
                    "description": _WHY[code],
                    "content": {"application/json": {"schema": body}},
                }
    if "#/components/schemas/HTTPValidationError" not in json.dumps(schema):
        comps.pop("HTTPValidationError", None)
        comps.pop("ValidationError", None)
    return schema
