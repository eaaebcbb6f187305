"""Each level kind's own settings (the ``params:`` of a level in the YAML), with their defaults.

A free dict read with ``.get()`` let a misspelt key (``stak: [encoder]``) go silently unused;
here every kind declares what it takes, so an unknown or mistyped key stops start-up naming
the task, the level and the key, as a bad policy does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _names(v: object) -> object:
    """One name or a list of names, as the YAML allows both."""
    return [v] if isinstance(v, str) else v


class LogisticSettings(_Settings):
    """SGD logistic regression on hashed word n-grams."""

    n_features: int = Field(2**18, ge=2, description="hashed feature space")
    batch_size: int = Field(
        8, ge=1, description="SGD learns once this many wait (every whole batch in one pass)"
    )
    alpha: float = Field(1e-5, gt=0, description="L2 strength")
    ngram_max: int = Field(2, ge=1, le=5)


class EncoderSettings(_Settings):
    """A logistic head on the sentence embedding, refitted on every remembered demonstration."""

    c: float = Field(0.1, gt=0, description="inverse L2 strength of the head")
    refit_every: int = Field(16, ge=1, description="new demonstrations between refits")
    min_examples: int = Field(32, ge=1, description="demonstrations before it answers")


class _LMSettings(_Settings):
    embed: str | None = Field(None, description="encoder backend for prompt embeddings")
    fuse: list[str] = Field(
        default_factory=list,
        description="last level only: earlier LM levels whose zero-shot label distributions "
        "multiply this one's (cascade.fuse)",
    )

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse_names(cls, v: object) -> object:
        return _names(v)


class LocalLMSettings(_LMSettings):
    """An in-process GGUF model; for classify tasks a probe on its hidden state."""

    probe: bool = Field(False, description="imitate the large LM with a head on the hidden state")
    probe_c: float = Field(0.03, gt=0)
    refit_every: int = Field(16, ge=1)
    probe_min_examples: int = Field(32, ge=1)
    stack: list[str] = Field(
        default_factory=list, description="earlier levels whose answers the probe also reads"
    )
    icl_k: int = Field(0, ge=0, description="nearest large-LM demonstrations shown as examples")
    icl_max: int = Field(2000, ge=1, description="demonstrations kept for icl_k")
    icl_words: int = Field(60, ge=1, description="words of each example shown")

    @field_validator("stack", mode="before")
    @classmethod
    def _stack_names(cls, v: object) -> object:
        return _names(v)


class OpenAISettings(_LMSettings):
    """Any OpenAI-compatible endpoint."""


class RouterSettings(_Settings):
    """A pre-router: predicts, before the next LM runs, whether its answer would be accepted."""

    embed: str | None = Field(None, description="encoder backend for prompt embeddings")
    batch_size: int = Field(8, ge=1)
    alpha: float = Field(1e-4, gt=0)
    n_features: int = Field(2**16, ge=2)


LevelSettings = (
    LogisticSettings | EncoderSettings | LocalLMSettings | OpenAISettings | RouterSettings
)

BY_KIND: dict[str, type[LevelSettings]] = {
    "logistic": LogisticSettings,
    "encoder": EncoderSettings,
    "local_lm": LocalLMSettings,
    "openai": OpenAISettings,
    "router": RouterSettings,
}


def parse_settings(kind: str, name: str, raw: Any) -> LevelSettings | Any:
    """The settings of level ``name`` of ``kind``; a ValueError that names the level and each
    bad key. An unknown kind is left for the kind field's own check to report."""
    cls = BY_KIND.get(kind)
    if cls is None or isinstance(raw, _Settings):
        return raw
    try:
        return cls.model_validate(raw if raw is not None else {})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "params"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown setting {key!r} (a {kind} level takes: {_known(cls)})")
            else:
                problems.append(f"{key}: {err['msg']}")
        raise ValueError(f"level {name!r} ({kind}) params: " + "; ".join(problems)) from None


def _known(cls: type[_Settings]) -> str:
    return ", ".join(cls.model_fields)
