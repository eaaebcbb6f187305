"""The configuration's ``backends``: the models levels call, by kind (``cascade.config``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlamaBackend(_Strict):
    """A GGUF model run in-process by llama-cpp-python."""

    kind: Literal["llama"]
    model: str = Field(description="GGUF file, absolute or relative to the models directory")
    n_ctx: int = Field(2048, ge=256)
    n_threads: int | None = Field(None, ge=1)
    top_k_entropy: int = Field(20, ge=0, le=1000, description="top-k used for per-step entropy")


class OpenAIBackend(_Strict):
    """Any OpenAI-compatible endpoint: vLLM, llama.cpp server, OpenAI itself."""

    kind: Literal["openai"]
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8081/v1; None: local")
    model: str = "large"
    api_key: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.25, ge=0)
    logprobs: bool = True
    top_logprobs: int = Field(20, ge=0, le=20)


class EncoderBackend(_Strict):
    """A sentence encoder (transformers) used for embeddings."""

    kind: Literal["encoder"]
    model: str = Field("all-MiniLM-L6-v2", description="directory, absolute or under models dir")
    max_length: int = Field(128, ge=8, le=512)
    precision: Literal["float32", "bfloat16", "int8"] = Field(
        "float32",
        description="weights of the forward pass: bfloat16 or int8 (dynamic, per channel) "
        "trade a little agreement with float32 (cosine >= 0.999 / 0.97 on probe sentences, "
        "checked at load) for a faster embedding of one short text (about 1.6x / 2.8x here)",
    )


Backend = Annotated[LlamaBackend | OpenAIBackend | EncoderBackend, Field(discriminator="kind")]
