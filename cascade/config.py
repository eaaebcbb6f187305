"""The YAML configuration: model backends, tasks and their ordered levels.

Validated with pydantic so that a bad file stops start-up with a message naming the file, the
field and what is wrong, instead of failing on the first request. ``${VAR}`` and
``${VAR:-default}`` are replaced from the environment so one file serves every deployment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cascade.backend_settings import Backend, EncoderBackend, LlamaBackend, OpenAIBackend
from cascade.level_settings import LevelSettings, LocalLMSettings, OpenAISettings, parse_settings
from cascade.semantic_settings import SemanticCacheConfig

__all__ = [
    "Backend",
    "Config",
    "ConfigError",
    "EncoderBackend",
    "LlamaBackend",
    "OpenAIBackend",
    "TaskConfig",
    "load_config",
]


def _default_config() -> Path:
    """deploy/config.yaml in a checkout; the copy packaged into the wheel otherwise."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "deploy" / "config.yaml"
    return checkout if checkout.is_file() else here / "default_config.yaml"


DEFAULT_CONFIG = _default_config()

S = TypeVar("S", bound=BaseModel)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------- policies


class ThresholdPolicyConfig(_Strict):
    """Answer when the level's confidence reaches ``threshold``; otherwise defer."""

    kind: Literal["threshold"] = "threshold"
    threshold: float = Field(0.9, ge=0.0, le=1.0)
    target_agreement: float | None = Field(
        None, gt=0.0, le=1.0, description="hold this agreement with the large LM instead"
    )
    beta: float | None = Field(None, ge=0.0, lt=1.0, description="exploration decay")
    explore_floor: float | None = Field(None, ge=0.0, le=1.0)
    warmup: int = Field(
        0, ge=0, description="send the first n items on to the large LM to learn from"
    )
    prior: float = Field(
        0.0,
        ge=0.0,
        description="with target_agreement: trust the level's own confidence as if it were "
        "this many explored samples, so a new task's level answers before it has its own",
    )
    explore_need: int = Field(
        0,
        ge=0,
        description="with target_agreement: explore until the agreement estimate holds this "
        "many explored samples, then at the floor (0: the decay set by beta)",
    )
    min_answer_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="with target_agreement: below this answer share the level costs more than "
        "it saves (its cost as a share of the large LM's); once even the estimate's upper bound "
        "answers less, it runs on learn_share of its traffic only",
    )
    learn_share: float = Field(
        1.0, gt=0.0, le=1.0, description="the share it then runs on, to keep learning"
    )
    idle_share: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="the share it runs on once even the upper bound says it cannot pay "
        "(at most learn_share; default learn_share)",
    )
    enter_z: float | None = Field(
        None,
        ge=0.5,
        le=5.0,
        description="with target_agreement: the Wilson z a level that answers less than "
        "min_answer_share (or nothing) must show the target at to start answering "
        "(default: the knob's 0.5)",
    )


class PolicyConfigAny(_Strict):
    """Any other policy kind; its own parameters are validated by the policy registry."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str


def _policy(v: object) -> object:
    if isinstance(v, Mapping) and v.get("kind", "threshold") == "threshold":
        return ThresholdPolicyConfig.model_validate(v)
    return PolicyConfigAny.model_validate(v) if isinstance(v, Mapping) else v


# ---------------------------------------------------------------------------------- levels

LevelKind = Literal["logistic", "encoder", "local_lm", "openai", "router"]


class LevelConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_\-]{0,31}$")
    kind: LevelKind
    backend: str | None = Field(None, description="backend name for encoder/local_lm/openai")
    cost: float = Field(gt=0, description="relative cost of one call of this level")
    policy: ThresholdPolicyConfig | PolicyConfigAny = ThresholdPolicyConfig()
    params: LevelSettings = Field(
        default_factory=OpenAISettings, description="the level kind's own settings"
    )

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: object) -> object:
        """``params`` as the kind's settings model: an unknown key is an error, not ignored."""
        if isinstance(data, Mapping) and isinstance(data.get("kind"), str):
            kind, name = data["kind"], data.get("name", "?")
            return {**data, "params": parse_settings(kind, str(name), data.get("params"))}
        return data

    def settings(self, cls: type[S]) -> S:
        """This level's settings as the model its kind takes (typed access for its level)."""
        if not isinstance(self.params, cls):
            raise TypeError(f"level {self.name!r} is a {self.kind}, not {cls.__name__}")
        return self.params

    @field_validator("policy", mode="before")
    @classmethod
    def _parse_policy(cls, v: object) -> object:
        return _policy(v)

    @model_validator(mode="after")
    def _policy_builds(self) -> LevelConfig:
        """Build the policy once, so an unknown kind or a bad parameter stops start-up."""
        from policies import PolicyError, make_policy

        try:
            make_policy(self.policy.kind, **self.policy.model_dump(exclude={"kind"}))
        except PolicyError as e:
            raise ValueError(str(e)) from None
        return self


class PromptConfig(_Strict):
    system: str | None = None
    user: str = "{input}"

    @field_validator("user")
    @classmethod
    def _has_input(cls, v: str) -> str:
        if "{input}" not in v:
            raise ValueError("the user template must contain the placeholder {input}")
        return v


class QualityConfig(_Strict):
    """When is a cheaper LM's generated answer acceptable next to the large LM's?"""

    measure: Literal["exact", "token_f1", "rouge_l", "cosine"] = "cosine"
    threshold: float = Field(0.8, ge=0.0, le=1.0)
    backend: str | None = Field(None, description="encoder backend, for the cosine measure")


class TaskConfig(_Strict):
    kind: Literal["classify", "generate"]
    labels: list[str] = Field(default_factory=list)
    label_words: dict[str, str] = Field(
        default_factory=dict, description="what an LM says for a label, if not the label itself"
    )
    prompt: PromptConfig = PromptConfig()
    max_tokens: int = Field(128, ge=1, le=4096)
    levels: list[LevelConfig] = Field(min_length=1)
    cache_ttl_s: int = Field(86_400, ge=0)
    shared_cache: bool = False
    semantic_cache: SemanticCacheConfig | None = None
    quality: QualityConfig = QualityConfig(measure="token_f1", threshold=0.5)

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.kind == "classify":
            if len(self.labels) < 2:
                raise ValueError("a classify task needs at least two labels")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must be unique")
            unknown = set(self.label_words) - set(self.labels)
            if unknown:
                raise ValueError(f"label_words names unknown labels: {sorted(unknown)}")
            from cascade.prompts import LabelMatcher

            LabelMatcher(self.labels, self.label_words)  # words must tell the labels apart
        elif self.labels:
            raise ValueError("labels are only for classify tasks")
        names = [lv.name for lv in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"level names must be unique within a task, got {names}")
        last = self.levels[-1]
        if last.kind not in ("local_lm", "openai"):
            raise ValueError(f"the last level is the large LM and must be an LM, not {last.kind!r}")
        for i, lv in enumerate(self.levels):
            if self.kind == "generate" and lv.kind in ("logistic", "encoder"):
                raise ValueError(
                    f"level {lv.name!r}: kind {lv.kind!r} can only answer classify tasks"
                )
            if lv.kind == "router" and self.levels[i + 1].kind not in ("local_lm", "openai"):
                raise ValueError(f"router {lv.name!r} must come right before an LM level")
            needs_embed = lv.policy.kind in ("posthoc_embed", "posthoc_hidden")
            if needs_embed and not getattr(lv.params, "embed", None):
                raise ValueError(
                    f"level {lv.name!r}: policy {lv.policy.kind} reads the prompt's sentence "
                    "embedding: give the level params.embed (an encoder backend)"
                )
            if lv.policy.kind == "posthoc_hidden" and lv.kind != "local_lm":
                raise ValueError(
                    f"level {lv.name!r}: posthoc_hidden reads the small LM's hidden states, "
                    "which only a local_lm level has"
                )
            stack = lv.params.stack if isinstance(lv.params, LocalLMSettings) else []
            missing = [n for n in stack if n not in names[:i]]
            if missing:
                raise ValueError(
                    f"level {lv.name!r} params.stack names {missing}, which are not earlier "
                    f"levels (earlier levels: {names[:i]})"
                )
        self._check_fuse()
        if (
            self.kind == "generate"
            and self.quality.measure == "cosine"
            and not self.quality.backend
        ):
            raise ValueError("quality.measure cosine needs quality.backend (an encoder)")
        return self

    def _check_fuse(self) -> None:
        """``params.fuse`` on the large LM: earlier zero-shot LM levels whose label
        distributions multiply the large LM's (``cascade.fuse``)."""
        for lv in self.levels[:-1]:
            if getattr(lv.params, "fuse", None):
                raise ValueError(f"level {lv.name!r}: only the last level (the large LM) fuses")
        names = self.fuse_names()
        if not names:
            return
        if self.kind != "classify":
            raise ValueError("params.fuse is for classify tasks: it multiplies label distributions")
        earlier = {lv.name: lv for lv in self.levels[:-1]}
        for name in names:
            lv = earlier.get(name)
            if lv is None:
                raise ValueError(
                    f"params.fuse names {name!r}, which is not an earlier level "
                    f"(earlier levels: {sorted(earlier)})"
                )
            if lv.kind not in ("local_lm", "openai"):
                raise ValueError(
                    f"params.fuse: level {name!r} is a {lv.kind}; only LM levels "
                    "have a zero-shot label distribution to fuse"
                )
            if isinstance(lv.params, LocalLMSettings) and lv.params.icl_k:
                raise ValueError(
                    f"params.fuse: level {name!r} prompts with learned examples "
                    "(icl_k), so its answer is not zero-shot"
                )

    def fuse_names(self) -> list[str]:
        """The levels ``params.fuse`` names (empty: the large LM's answer is served as is)."""
        return list(getattr(self.levels[-1].params, "fuse", []))

    def word(self, label: str) -> str:
        return self.label_words.get(label, label)


class Defaults(_Strict):
    request_timeout_s: float = Field(60.0, gt=0)
    max_input_bytes: int = Field(32 * 1024, ge=1)
    # requests that need a model (cache misses) run at most max_inflight at a time per
    # process; one that would wait longer than queue_timeout_s for a turn is shed with 503 and
    # Retry-After instead, so an overload (a Redis outage turning repeats into model calls)
    # answers quickly rather than queueing requests for tens of seconds
    max_inflight: int = Field(16, ge=1)
    queue_timeout_s: float = Field(5.0, ge=0)


class Config(_Strict):
    backends: dict[str, Backend] = Field(default_factory=dict)
    tasks: dict[str, TaskConfig] = Field(min_length=1)
    defaults: Defaults = Defaults()

    @model_validator(mode="after")
    def _backends_exist(self) -> Config:
        needs = {"encoder": "encoder", "local_lm": "llama", "openai": "openai"}
        for tname, task in self.tasks.items():
            qb = task.quality.backend
            if qb is not None and getattr(self.backends.get(qb), "kind", None) != "encoder":
                raise ValueError(f"tasks.{tname}.quality.backend: {qb!r} is not an encoder backend")
            sc = task.semantic_cache
            if sc and getattr(self.backends.get(sc.encoder), "kind", None) != "encoder":
                raise ValueError(
                    f"tasks.{tname}.semantic_cache.encoder: {sc.encoder!r} is not an encoder "
                    "backend"
                )
            for lv in task.levels:
                emb = getattr(lv.params, "embed", None)
                if emb is not None and getattr(self.backends.get(str(emb)), "kind", None) != (
                    "encoder"
                ):
                    raise ValueError(
                        f"tasks.{tname}.levels.{lv.name}.params.embed: {emb!r} is not an "
                        "encoder backend"
                    )
            for lv in task.levels:
                if lv.kind not in needs:
                    continue
                if lv.backend is None:
                    raise ValueError(f"tasks.{tname}.levels.{lv.name}: needs a backend")
                b = self.backends.get(lv.backend)
                if b is None:
                    raise ValueError(
                        f"tasks.{tname}.levels.{lv.name}: unknown backend {lv.backend!r} "
                        f"(known: {sorted(self.backends)})"
                    )
                if b.kind != needs[lv.kind]:
                    raise ValueError(
                        f"tasks.{tname}.levels.{lv.name}: a {lv.kind} level needs a "
                        f"{needs[lv.kind]} backend, {lv.backend!r} is {b.kind}"
                    )
        return self


def _interpolate(text: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        return ""

    return _VAR.sub(sub, text)


def _substitute(obj: object, env: Mapping[str, str]) -> object:
    """Replace ${VAR} inside parsed string values (after YAML parsing, so a value with '#' or
    ':' stays one value); a value that becomes empty means unset (None)."""
    if isinstance(obj, dict):
        return {k: _substitute(v, env) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, env) for v in obj]
    if isinstance(obj, str) and "${" in obj:
        value = _interpolate(obj, env)
        return None if value == "" else value
    return obj


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"invalid configuration in {path}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        lines.append(f"  {loc or '(top level)'}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError naming file and field."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {p}: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {p}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {p}: the top level must be a mapping")
    try:
        return Config.model_validate(_substitute(data, os.environ if env is None else env))
    except ValidationError as e:
        raise ConfigError(_format_errors(p, e)) from e
