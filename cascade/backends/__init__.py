"""Model backends, loaded once per process and shared by every level that names them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cascade.backends.base import BackendError, ContextLengthError, LMResult
from cascade.config import Config
from cascade.config import EncoderBackend as EncoderCfg
from cascade.config import LlamaBackend as LlamaCfg
from cascade.config import OpenAIBackend as OpenAICfg

__all__ = ["BackendError", "BackendPool", "ContextLengthError", "LMResult"]

C = TypeVar("C", LlamaCfg, OpenAICfg, EncoderCfg)


def resolve(models_dir: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else models_dir / p


class BackendPool:
    """Creates backends on first use. ``cache`` replays recorded OpenAI answers (benchmarks)."""

    def __init__(
        self,
        config: Config,
        models_dir: Path,
        cache: object | None = None,
        n_threads: int | None = None,
        wrap: Callable[[str, object], object] | None = None,
        preloaded: dict[str, object] | None = None,
    ) -> None:
        self.config = config
        self.models_dir = models_dir
        self.cache = cache
        self.n_threads = n_threads
        self.wrap = wrap  # e.g. benchmarks memoise frozen models: wrap(kind, backend)
        # backends already loaded elsewhere (by name), e.g. shared by several apps in tests
        self._made: dict[str, object] = dict(preloaded or {})

    def _get(
        self, name: str, cfg_type: type[C], kind: str | None, make: Callable[[C], object]
    ) -> Any:
        """The backend ``name``, made from its configuration on first use; ``kind`` names
        what ``wrap`` is told (None: never wrapped)."""
        if name not in self._made:
            try:
                cfg = self.config.backends[name]
            except KeyError:
                raise BackendError(f"unknown backend {name!r}") from None
            assert isinstance(cfg, cfg_type)
            backend = make(cfg)
            wrapped = kind is not None and self.wrap is not None
            self._made[name] = self.wrap(kind, backend) if wrapped else backend  # type: ignore[misc,arg-type]
        return self._made[name]

    def llama(self, name: str) -> Any:
        return self._get(name, LlamaCfg, "llama", self._new_llama)

    def _new_llama(self, cfg: LlamaCfg) -> object:
        from cascade.backends.llama import LlamaBackend  # lazy: llama_cpp stays optional

        path = resolve(self.models_dir, cfg.model)
        threads = cfg.n_threads or self.n_threads
        return LlamaBackend(
            path, cfg.n_ctx, threads, top_k_entropy=cfg.top_k_entropy, name=Path(cfg.model).stem
        )

    def openai(self, name: str) -> Any:
        from cascade.backends.openai_http import OpenAIBackend

        def make(cfg: OpenAICfg) -> OpenAIBackend:
            if not cfg.base_url:
                raise BackendError(
                    f"backend {name!r} has no base_url: set LLM_BASE_URL, or let "
                    "`cascade-gateway serve` start the local llama.cpp server"
                )
            return OpenAIBackend(
                cfg.base_url,
                cfg.model,
                api_key=cfg.api_key,
                timeout_s=cfg.timeout_s,
                max_retries=cfg.max_retries,
                backoff_s=cfg.backoff_s,
                logprobs=cfg.logprobs,
                top_logprobs=cfg.top_logprobs,
                cache=self.cache,  # type: ignore[arg-type]
            )

        return self._get(name, OpenAICfg, None, make)

    def encoder(self, name: str) -> Any:
        return self._get(name, EncoderCfg, "encoder", self._new_encoder)

    def _new_encoder(self, cfg: EncoderCfg) -> object:
        from cascade.backends.encoder import EncoderBackend

        path = resolve(self.models_dir, cfg.model)
        name = Path(cfg.model).name
        if cfg.precision != "float32":  # another vector space: never mixed with float32 ones
            name = f"{name}-{cfg.precision}"
        return EncoderBackend(path, cfg.max_length, name=name, precision=cfg.precision)

    async def aclose(self) -> None:
        for b in self._made.values():
            close = getattr(b, "aclose", None)
            if close is not None:
                await close()
