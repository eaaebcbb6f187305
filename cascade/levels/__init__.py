"""Level kinds and the factory that builds a task's levels from its configuration."""

from __future__ import annotations

from cascade.backends import BackendPool
from cascade.config import LevelConfig, TaskConfig
from cascade.level_settings import LocalLMSettings, OpenAISettings, RouterSettings
from cascade.levels.base import Demo, Level, LevelOutput, Query

__all__ = ["Demo", "Level", "LevelOutput", "Query", "build_level"]


def build_level(
    cfg: LevelConfig, task: TaskConfig, pool: BackendPool, for_learner: bool = False
) -> Level:
    """A level of a task; ``for_learner`` skips loading LMs (the learner trains heads only)."""
    if cfg.kind == "logistic":
        from cascade.levels.logistic import LogisticLevel

        return LogisticLevel(cfg, task)
    if cfg.kind == "router":
        from cascade.levels.router import RouterLevel

        names = [lc.name for lc in task.levels]
        target = names[names.index(cfg.name) + 1]
        embed = cfg.settings(RouterSettings).embed
        return RouterLevel(cfg, task, target, pool.encoder(str(embed)) if embed else None)
    assert cfg.backend is not None
    if cfg.kind == "encoder":
        from cascade.levels.encoder import EncoderLevel

        return EncoderLevel(cfg, task, pool.encoder(cfg.backend))
    if cfg.kind == "local_lm":
        from cascade.levels.lm import LocalLMLevel

        level = LocalLMLevel(cfg, task, None if for_learner else pool.llama(cfg.backend))
        embed = cfg.settings(LocalLMSettings).embed
        if embed and not for_learner:
            level.encoder = pool.encoder(embed)
        return level
    if cfg.kind == "openai":
        from cascade.levels.lm import OpenAILevel

        olevel = OpenAILevel(cfg, task, pool.openai(cfg.backend))
        embed = cfg.settings(OpenAISettings).embed
        if embed:
            olevel.encoder = pool.encoder(embed)
        return olevel
    raise ValueError(f"unknown level kind {cfg.kind!r}")
