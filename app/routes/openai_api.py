"""The OpenAI-compatible surface: /v1/models and /v1/chat/completions (plain and streaming).

Each task is a model named ``cascade/<task>``. The official ``openai`` client pointed at the
gateway works unchanged; errors come in OpenAI's shape. A streamed answer carries only the text
of the level that answers: a cheaper level's text is sent after its policy accepted it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from app.auth import Caller, authenticate, caller
from app.deps import gateway
from app.gateway import Gateway
from app.schemas_openai import ChatCompletionRequest, chat_input, model_name, task_of
from app.timing import cascade_headers, overhead_ms
from cascade.outcome import CascadeError, Outcome
from cascade.runner import Ask

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models")
async def models(gw: Gateway = Depends(gateway), who: Caller = Depends(caller)) -> dict[str, Any]:
    created = int(gw.started_at)
    return {
        "object": "list",
        "data": [
            {"id": model_name(t), "object": "model", "created": created, "owned_by": "cascade"}
            for t in gw.cascade.tasks
        ],
    }


def _logprobs(o: Outcome, top: int | None) -> dict[str, Any] | None:
    if o.logprobs is None or o.tokens is None or len(o.tokens) != len(o.logprobs):
        return None
    content = []
    for i, (tok, lp) in enumerate(zip(o.tokens, o.logprobs, strict=True)):
        entry: dict[str, Any] = {
            "token": tok,
            "logprob": lp,
            "bytes": list(tok.encode()),
            "top_logprobs": [],
        }
        if top and o.top_logprobs and i < len(o.top_logprobs):
            best = sorted(o.top_logprobs[i].items(), key=lambda kv: -kv[1])[:top]
            entry["top_logprobs"] = [
                {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in best
            ]
        content.append(entry)
    return {"content": content}


def _finish_reason(o: Outcome) -> str:
    return "length" if o.finish_reason == "length" and o.label is None else "stop"


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    response: Response,
) -> dict[str, Any] | StreamingResponse:
    gw: Gateway = request.app.state.gateway
    who = await authenticate(request, gw)
    task = task_of(body.model, gw.cascade.tasks)
    rt = gw.cascade.task(task)
    text, messages = chat_input(body, rt.config)
    ask = Ask(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature or 0.0,
        tenant=who.tenant,
        messages=messages,
        logprobs=body.logprobs,
    )
    created = int(time.time())
    if not body.stream:
        o = await gw.cascade.run(task, text, ask)
        over = overhead_ms(request, o.model_ms)
        for k, v in cascade_headers(o.level, o.cached, over, o.cache, o.similarity).items():
            response.headers[k] = v
        return {
            "id": f"chatcmpl-{o.request_id}",
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": o.output},
                    "finish_reason": _finish_reason(o),
                    "logprobs": _logprobs(o, body.top_logprobs) if body.logprobs else None,
                }
            ],
            "cascade": o.to_json(),
        }

    events = gw.cascade.stream(task, text, ask)
    first = await anext(events)  # errors before the first byte become normal HTTP errors
    headers = cascade_headers(
        first.level or "",
        bool(first.cached),
        first.overhead_ms or 0.0,
        first.cache,
        first.similarity,
    )
    cid = f"chatcmpl-{int(time.time() * 1000)}-{id(events) & 0xFFFF:x}"

    def chunk(
        delta: dict[str, Any],
        finish: str | None = None,
        extra: dict[str, Any] | None = None,
        outcome: Outcome | None = None,
    ) -> str:
        obj: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **(extra or {})}],
        }
        if outcome is not None:  # the last chunk says how it was answered, degraded included
            obj["cascade"] = outcome.to_json()
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def sse() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for ev in events:
                if ev.delta:
                    yield chunk({"content": ev.delta})
                if ev.outcome is not None:
                    o = ev.outcome
                    extra = {"logprobs": _logprobs(o, body.top_logprobs)} if body.logprobs else {}
                    yield chunk({}, _finish_reason(o), extra, o)
        except Exception as e:
            # mid-stream the status is already sent: an error event (the openai client raises
            # it) says the text so far is not a complete answer
            status = e.status if isinstance(e, CascadeError) else 500
            if not isinstance(e, CascadeError):
                log.exception("stream failed on %s", body.model)
            err = {"error": {"message": str(e), "type": "server_error", "code": status}}
            yield f"data: {json.dumps(err, ensure_ascii=False)}\n\n"
        finally:
            await events.aclose()  # release the request's turn at the models now
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        sse(),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )
