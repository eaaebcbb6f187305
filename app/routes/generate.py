"""POST /generate: the native API."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.deps import gateway
from app.main import Gateway
from app.schemas import ErrorBody, GenerateRequest, GenerateResponse

router = APIRouter(tags=["generate"])

_ERRORS = {
    404: {"model": ErrorBody, "description": "unknown task"},
    413: {"model": ErrorBody, "description": "input too large"},
    422: {"model": ErrorBody, "description": "malformed body"},
    503: {"model": ErrorBody, "description": "no level could answer"},
}


@router.post("/generate", response_model=GenerateResponse, responses=_ERRORS)  # type: ignore[arg-type]
async def generate(
    body: GenerateRequest, response: Response, gw: Gateway = Depends(gateway)
) -> dict[str, object]:
    """Answer with the cheapest level whose policy accepts its answer."""
    outcome = await gw.cascade.run(
        body.task,
        body.input,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        use_cache=body.cache,
    )
    response.headers["x-cascade-level"] = outcome.level
    response.headers["x-cascade-cached"] = str(outcome.cached).lower()
    response.headers["x-cascade-overhead-ms"] = f"{outcome.overhead_ms:.3f}"
    return outcome.to_json()
