"""Request models of the OpenAI-compatible API, and how a chat becomes a task's input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from app.schemas import Text
from cascade.config import TaskConfig
from cascade.outcome import UnknownTaskError
from cascade.prompts import Message

PREFIX = "cascade/"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class ChatCompletionRequest(BaseModel):
    """The fields we act on; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "cascade/sentiment",
                    "messages": [{"role": "user", "content": "a warm, funny film"}],
                },
                {
                    "model": "cascade/chat",
                    "messages": [
                        {"role": "system", "content": "Answer in one word."},
                        {"role": "user", "content": "What colour is the sky?"},
                    ],
                    "max_tokens": 4,
                    "stream": True,
                },
            ]
        },
    )
    model: Text = Field(min_length=1, description="cascade/<task>, as listed by /v1/models")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int = Field(1, description="only 1 is supported")

    @field_validator("n")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if v[-1].role != "user":
            raise ValueError("the last message must come from the user")
        if not v[-1].text().strip():
            raise ValueError("the last user message is empty")
        return v


def model_name(task: str) -> str:
    return PREFIX + task


def task_of(model: str, tasks: Mapping[str, Any]) -> str:
    task = model[len(PREFIX) :] if model.startswith(PREFIX) else model
    if task not in tasks:
        raise UnknownTaskError(
            f"model {model!r} does not exist; available: "
            + ", ".join(model_name(t) for t in sorted(tasks))
        )
    return task


def chat_input(body: ChatCompletionRequest, task: TaskConfig) -> tuple[str, list[Message] | None]:
    """The task input (cache key, demonstrations) and, for chats, the messages to send.

    Classify tasks read the last user message through the task's own prompt. Generate tasks
    render the last user message through the task's template; a system message from the
    client replaces the task's, and earlier turns are kept.
    """
    last = body.messages[-1].text()
    if task.kind == "classify":
        return last, None
    system = next(
        (m.text() for m in body.messages if m.role in ("system", "developer")), task.prompt.system
    )
    turns = [m for m in body.messages[:-1] if m.role in ("user", "assistant")]
    if not turns and system == task.prompt.system:
        return last, None
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": m.role, "content": m.text()} for m in turns]
    msgs.append({"role": "user", "content": task.prompt.user.replace("{input}", last)})
    key = json.dumps([system, [(m.role, m.text()) for m in turns], last], ensure_ascii=False)
    return key, msgs
