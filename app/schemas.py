"""The HTTP API contract (the OpenAPI page is generated from these)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, field_validator


def _well_formed(v: object) -> object:
    """JSON may spell a lone UTF-16 surrogate (``"\\udc00"``); no model, store or response can
    carry one, so it is refused here with the field's name rather than failing later."""
    if not isinstance(v, str):
        return v  # the str type that follows says what is wrong with it
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text contains a lone UTF-16 surrogate ({v[e.start]!r} at character {e.start}); "
            "send valid Unicode"
        ) from None
    return v


#: Text from a client: any string that is valid Unicode.
Text = Annotated[str, BeforeValidator(_well_formed)]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"task": "sentiment", "input": "a warm, funny film"}]},
    )

    task: Text = Field(min_length=1, max_length=64, description="a task from the configuration")
    input: Text = Field(min_length=1, description="the text to classify or answer")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="generate tasks: limit")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    cache: StrictBool = Field(True, description="false: neither read nor write the outcome cache")

    @field_validator("input")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("input must contain some non-whitespace text")
        return v


class LevelTraceOut(BaseModel):
    name: str
    answered: bool = Field(description="this level's answer is the response")
    confidence: float | None = Field(description="the level's confidence; null if it had none")
    latency_ms: float
    ready: bool = Field(description="false while a learned level has not learned anything yet")
    valid: bool = Field(description="false when an LM answered outside the label set")
    explored: bool = Field(description="deferred only to explore (the policy would answer)")
    error: str | None = Field(description="why the level failed, if it did")


class GenerateResponse(BaseModel):
    request_id: str
    task: str
    output: str
    label: str | None
    level: str = Field(description="the level that answered")
    levels: list[LevelTraceOut] = Field(description="every level tried, in order")
    cached: bool
    cache: Literal["exact", "semantic"] | None = Field(
        None, description="which cache answered: the same request, or a similar one's answer"
    )
    similarity: float | None = Field(
        None, description="a semantic hit: cosine similarity to the request it answered"
    )
    cost: float = Field(description="relative cost units from the configuration")
    degraded: bool = Field(description="the large LM failed; a cheaper level's answer was used")
    version: int = Field(description="learned version of the task's levels and policies")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"request_id": "4f1c0e6a9b7d4e2f8a3c5b1d7e9f0a2c", "label": "positive"}]
        },
    )

    request_id: Text = Field(min_length=8, max_length=64)
    label: Text | None = Field(None, description="classify tasks: the correct label")
    output: Text | None = Field(None, description="generate tasks: the correct answer")


class FeedbackResponse(BaseModel):
    accepted: bool
    request_id: str
    task: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[dict[str, Any]] | None = None
