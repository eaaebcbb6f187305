"""POST /feedback: a client or a human corrects an answer; it becomes a demonstration that
outranks the large LM's answer for that item."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from app.auth import Caller, caller
from app.deps import gateway
from app.gateway import Gateway
from app.schemas import ErrorBody, FeedbackRequest, FeedbackResponse
from cascade.feedback import FeedbackError, submit_feedback

router = APIRouter(tags=["feedback"])


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def feedback(
    body: FeedbackRequest, gw: Gateway = Depends(gateway), who: Caller = Depends(caller)
) -> FeedbackResponse:
    """Scoped to the caller: a tenant can only correct its own requests."""
    try:
        task = await submit_feedback(
            gw.cascade, body.request_id, body.label, body.output, tenant=who.tenant
        )
    except FeedbackError as e:
        raise HTTPException(e.status, str(e)) from None
    return FeedbackResponse(accepted=True, request_id=body.request_id, task=task)
