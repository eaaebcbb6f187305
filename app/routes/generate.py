"""POST /generate: the native API."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.auth import authenticate
from app.gateway import Gateway
from app.schemas import ErrorBody, GenerateRequest, GenerateResponse
from app.timing import cascade_headers, overhead_ms
from cascade.runner import Ask

router = APIRouter(tags=["generate"])

_ERRORS = {
    404: {"model": ErrorBody, "description": "unknown task"},
    413: {"model": ErrorBody, "description": "input too large"},
    422: {"model": ErrorBody, "description": "malformed body"},
    503: {"model": ErrorBody, "description": "no level could answer"},
}


@router.post("/generate", response_model=GenerateResponse, responses=_ERRORS)  # type: ignore[arg-type]
async def generate(body: GenerateRequest, request: Request) -> JSONResponse:
    """Answer with the cheapest level whose policy accepts its answer."""
    gw: Gateway = request.app.state.gateway
    who = await authenticate(request, gw)
    ask = Ask(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        use_cache=body.cache,
        tenant=who.tenant,
    )
    outcome = await gw.cascade.run(body.task, body.input, ask)
    overhead = overhead_ms(request, outcome.model_ms)
    # a JSONResponse skips re-validating our own output against the response model (the
    # model still documents the API); on the cache-hit path that validation is most of the time
    headers = cascade_headers(
        outcome.level, outcome.cached, overhead, outcome.cache, outcome.similarity
    )
    return JSONResponse(outcome.to_json(), headers=headers)
