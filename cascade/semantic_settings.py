"""A task's ``semantic_cache`` block: near-repeats answered from cached large-LM answers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SemanticCacheConfig(BaseModel):
    """Serve a cached large-LM answer to a request worded differently, where the learned
    gate shows the target agreement (``policies.semantic``)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(description="encoder backend that embeds requests")
    target_agreement: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="a hit's answer agrees with what the large LM would say at least this often",
    )
    fixed_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="serve every neighbour at or above this cosine, unverified (what peers do)",
    )
    floor: float = Field(0.5, ge=0.0, lt=1.0, description="neighbours below this never count")
    verify_share: float = Field(
        0.05, ge=0.0, le=1.0, description="least share of would-be hits checked by the cascade"
    )
    min_samples: int = Field(30, ge=1, description="comparisons before the gate serves a hit")
    comparisons: int = Field(
        5000, ge=10, description="the gate learns from this many latest comparisons (shared log)"
    )
    z: float = Field(1.28, gt=0.0, description="Wilson lower bound's z (1.28: one-sided 90%)")
    residual_prior: float = Field(
        100.0,
        ge=0.0,
        description="shrink a positive residual by n / (n + this) before it lifts the unverified "
        "hits' estimate (0 passed the bound at target 0.99 on two of ten orders of bench "
        "semcache-sim; 100 held it on all at every target)",
    )
    max_entries: int = Field(20_000, ge=1, description="entries kept per task (shared log)")
    ttl_s: int | None = Field(None, ge=1, description="entry lifetime; the task's cache_ttl_s")
