"""Error responses a client can act on: 4xx with a message, never a 500 for bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cascade.runner import CascadeError

log = logging.getLogger(__name__)

_FASTAPI_UNPARSED = "There was an error parsing the body"


def _field(loc: tuple[object, ...] | list[object]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _printable(text: str) -> str:
    """An error may quote the client's own bytes (a field name, a value): keep a lone
    surrogate from making the error itself unencodable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_openai_route(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def error_response(
    request: Request,
    status: int,
    message: str,
    kind: str,
    errors: list[dict[str, object]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The /v1 routes answer in OpenAI's error shape; the native API with ``detail``."""
    message = _printable(message)
    errors = [{k: _printable(str(v)) for k, v in e.items()} for e in errors or []] or None
    if is_openai_route(request):
        body: dict[str, object] = {
            "error": {"message": message, "type": kind, "code": status, "param": None}
        }
        if errors:
            body["error"]["param"] = errors[0].get("field")  # type: ignore[index]
    else:
        body = {"detail": message}
        if errors:
            body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            field = _field(e.get("loc", ()))
            msg = e.get("msg", "invalid")
            if e.get("type") == "json_invalid":
                field, msg = "body", f"malformed JSON: {e.get('ctx', {}).get('error', msg)}"
            errors.append({"field": field, "problem": msg})
        message = "; ".join(f"{x['field']}: {x['problem']}" for x in errors)
        status = 400 if is_openai_route(request) else 422  # what OpenAI's API answers
        return error_response(request, status, message, "invalid_request_error", errors)

    @app.exception_handler(CascadeError)
    async def _cascade(request: Request, exc: CascadeError) -> JSONResponse:
        kind = "service_unavailable" if exc.status >= 500 else "invalid_request_error"
        retry = exc.retry_after_s
        headers = None if retry is None else {"retry-after": str(max(1, round(retry)))}
        return error_response(request, exc.status, str(exc), kind, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _FASTAPI_UNPARSED:
            # FastAPI's word for a body json.loads could not take (bytes that are not UTF-8,
            # nesting past the parser's depth): a malformed body like any other
            return error_response(
                request,
                400 if is_openai_route(request) else 422,
                "malformed JSON: the body is not UTF-8 text, or is nested too deeply",
                "invalid_request_error",
                [{"field": "body", "problem": "malformed JSON"}],
            )
        kind = {
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
        }.get(exc.status_code, "invalid_request_error")
        return error_response(
            request, exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, "internal error; see the gateway's log", "server_error")
