"""LM levels: ``local_lm`` (GGUF in-process) and ``openai`` (any compatible endpoint).

Both turn a backend's ``LMResult`` into a ``LevelOutput``. For classify tasks the label
distribution comes from the log-probabilities of the label words as the next token; an answer
that names no label is *invalid* (counted, never learned from). For generated text the level's
confidence is the geometric-mean token probability (Chow-Average); the token log-probabilities
travel on to the policies.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator

import anyio
import numpy as np

from cascade.aio import in_thread
from cascade.backends.base import BackendError, LMResult, SilentStreamError
from cascade.backends.encoder import EncoderBackend
from cascade.backends.llama import LlamaBackend
from cascade.backends.openai_http import OpenAIBackend
from cascade.config import LevelConfig, TaskConfig
from cascade.demos import decode_vector
from cascade.level_settings import LocalLMSettings
from cascade.levels.base import Demo, Level, LevelOutput, Query
from cascade.levels.heads import LogisticHead
from cascade.levels.neighbours import DemoIndex, few_shot_messages
from cascade.prompts import Message
from policies.abort import EarlyAbort

#: the first token's probability mass on the label words above which a classify answer counts
#: even when its likeliest token is no label (SmolLM2 on an AVX2-only llama.cpp build starts
#: some answers with "This" and still puts ~25% of its mass on the labels)
MIN_LABEL_MASS = 0.05


def sequence_confidence(token_logprobs: list[float]) -> float:
    """exp(mean log p): a length-neutral confidence in [0, 1] for generated text."""
    if not token_logprobs:
        return 0.0
    return float(math.exp(sum(token_logprobs) / len(token_logprobs)))


def probe_input(hidden: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
    """The probe's features: the LM's final hidden state and its zero-shot log-probabilities."""
    return np.concatenate([hidden, np.log(np.clip(zero_shot, 1e-6, 1.0))]).astype(np.float32)


class _LMLevel(Level):
    encoder: EncoderBackend | None = None  # params.embed: a sentence embedding of the prompt

    async def prompt_embedding(self, q: Query) -> np.ndarray | None:
        if self.encoder is None:
            return None
        emb = q.shared.get("embedding")
        if emb is None:
            encoder = self.encoder
            emb = (await anyio.to_thread.run_sync(lambda: encoder.embed([q.text])))[0]
            q.shared["embedding"] = emb
        return emb

    def to_output(self, r: LMResult, latency_ms: float) -> LevelOutput:
        if self.task.kind == "generate":
            aborted = r.finish_reason == "aborted"
            return LevelOutput(
                name=self.name,
                text=r.text,
                confidence=sequence_confidence(r.token_logprobs) if r.has_logprobs else 0.0,
                latency_ms=latency_ms,
                lm=r,
                # an aborted answer is unfinished: nothing to decide on, judge or learn from
                ready=not aborted,
                extra={"has_logprobs": float(r.has_logprobs), "aborted": float(aborted)},
            )
        assert self.matcher is not None
        answered = self.matcher.match_text(r.text)
        # a model that starts a sentence ("This review is ...") still weighs the labels at its
        # first token: with a fair share of its mass on them, their distribution is its answer
        mass = r.label_mass if r.label_mass is not None and not math.isnan(r.label_mass) else 0.0
        if r.label_probs is None or (answered is None and mass < MIN_LABEL_MASS):
            return LevelOutput(
                name=self.name, text=r.text, valid=False, latency_ms=latency_ms, lm=r
            )
        probs = np.array([r.label_probs.get(lab, 0.0) for lab in self.labels])
        out = self.classify_output(probs, latency_ms, lm=r)
        if r.label_mass is not None and not math.isnan(r.label_mass):
            out.extra["label_mass"] = float(r.label_mass)
        return out


class LocalLMLevel(_LMLevel):
    """A GGUF LM in-process. For classify tasks, ``params.probe: true`` adds a head learned
    online over the LM's final hidden state (and its zero-shot label log-probabilities) that
    imitates the large LM; ``params.stack: [level, ...]`` averages the level's answer with
    the class distributions of earlier levels. An average of opinions that err differently
    (zero-shot, the probe, the encoder's head) ranks items by how safe they are to answer far
    better than any one of them: the large LM's accuracy at a fraction of its calls."""

    kind = "local_lm"

    def __init__(self, cfg: LevelConfig, task: TaskConfig, backend: LlamaBackend | None) -> None:
        super().__init__(cfg, task)
        self.backend = backend  # None in the learner process: only the probe is needed there
        p = cfg.settings(LocalLMSettings)
        self.probe_enabled = p.probe and task.kind == "classify"
        self.probe = LogisticHead(
            len(self.labels) or 1,
            c=p.probe_c,
            refit_every=p.refit_every,
            min_examples=p.probe_min_examples,
        )
        self.stack = list(p.stack)
        # in-context imitation: the k nearest large-LM demonstrations as few-shot turns
        self.icl_k = p.icl_k if task.kind == "classify" else 0
        self.index = DemoIndex(p.icl_max, p.icl_words)
        self.trainable = self.probe_enabled or self.icl_k > 0

    def _need_backend(self) -> LlamaBackend:
        if self.backend is None:
            raise BackendError(f"level {self.name}: no model loaded in this process")
        return self.backend

    def warmup(self) -> None:
        backend = self._need_backend()
        messages = [{"role": "user", "content": "hello"}]
        if self.matcher is not None:
            backend.classify(messages, self.matcher)  # also scans the vocabulary once
        else:
            backend.generate(messages, max_tokens=1)

    # ------------------------------------------------------------------ probe

    def probe_input(self, hidden: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        return probe_input(hidden, zero_shot)

    @property
    def probe_ready(self) -> bool:
        return self.probe.trained

    def to_output(self, r: LMResult, latency_ms: float) -> LevelOutput:
        out = super().to_output(r, latency_ms)
        if not (out.valid and out.probs is not None):
            return out
        zero_shot = out.probs
        for lab, pz in zip(self.labels, zero_shot, strict=True):
            out.extra[f"zs_{lab}"] = float(pz)  # the LM's own opinion, for stacking and fusing
        if self.probe_enabled and self.probe_ready and r.hidden is not None:
            probs = self.probe.proba(self.probe_input(r.hidden, zero_shot))
            self._set_probs(out, probs)
            out.extra["zs_agree"] = float(int(np.argmax(zero_shot)) == int(np.argmax(probs)))
            out.extra["updates"] = float(self.updates)
        return out

    def _set_probs(self, out: LevelOutput, probs: np.ndarray) -> None:
        i = int(np.argmax(probs))
        out.probs, out.label, out.text = probs, self.labels[i], self.labels[i]
        out.confidence = float(probs[i])

    def stacked(self, out: LevelOutput, q: Query) -> LevelOutput:
        """Average zero-shot, probe and the stacked earlier levels' class distributions.

        The probe alone is a worse answer than its average with the zero-shot one (measured on
        Rotten Tomatoes with the probe fitted in hindsight): they err differently, so the probe
        never answers on its own."""
        if not out.valid or out.probs is None or not (self.stack or self.probe_ready):
            return out
        zs = [out.extra.get(f"zs_{lab}") for lab in self.labels]
        zero_shot = np.array(zs, dtype=np.float64) if None not in zs else np.asarray(out.probs)
        opinions = [zero_shot] + ([out.probs] if self.probe_ready else [])
        earlier = q.shared.get("outputs", {})
        for name in self.stack:
            o = earlier.get(name)
            if o is not None and o.ready and o.valid and o.probs is not None:
                opinions.append(np.asarray(o.probs))
        if len(opinions) > 1:
            self._set_probs(out, np.mean(opinions, axis=0))
            out.extra["opinions"] = float(len(opinions))
        return out

    def head_examples(self, demos: list[Demo]) -> tuple[np.ndarray, np.ndarray] | None:
        """The probe's inputs and label indices for these demonstrations (None: none usable)."""
        xs, ys = [], []
        for d in demos:
            rec = d.levels.get(self.name) or {}
            if d.label not in self.labels or not rec.get("hidden") or not rec.get("valid", True):
                continue
            extra = (rec.get("features") or {}).get("extra") or {}
            zs = np.array([extra.get(f"zs_{lab}", 1.0 / len(self.labels)) for lab in self.labels])
            xs.append(self.probe_input(decode_vector(rec["hidden"]), zs))
            ys.append(self.labels.index(d.label))
        return (np.stack(xs), np.array(ys)) if xs else None

    def learn(self, demos: list[Demo]) -> bool:
        changed = self._index(demos)
        ex = self.head_examples(demos) if self.probe_enabled else None
        if ex is not None and self.probe.add(*ex):
            changed = True
        if changed:
            self.updates += 1
        return changed

    def _index(self, demos: list[Demo]) -> bool:
        use = [d for d in demos if d.label in self.labels and d.embedding is not None]
        if not self.icl_k or not use:
            return False
        self.index.add(
            np.stack([np.asarray(d.embedding) for d in use]),
            [d.text for d in use],
            [self.labels.index(str(d.label)) for d in use],
        )
        return True

    async def few_shot(self, q: Query) -> list[Message]:
        """The query's messages with the nearest demonstrations as earlier turns."""
        if not self.icl_k or not len(self.index):
            return q.messages
        emb = await self.prompt_embedding(q) if self.encoder else q.shared.get("embedding")
        if emb is None:  # neither an `embed` param nor an encoder level before this one
            return q.messages
        shots = self.index.nearest(emb, self.icl_k)
        return few_shot_messages(
            self.task.prompt, q.messages, [(t, self.labels[i]) for t, i in shots]
        )

    def remember(self, demos: list[Demo]) -> None:
        ex = self.head_examples(demos) if self.probe_enabled else None
        if ex is not None:
            self.probe.remember(*ex)

    def state(self) -> dict[str, np.ndarray]:
        probe = self.probe.state() if self.probe.trained else {}
        index = self.index.state()
        if not probe and not index:
            return {}
        return {**probe, **index, "updates": np.array([self.updates], dtype=np.int64)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if self.probe_enabled:
            self.probe.load_state(arrays)
        self.index.load_state(arrays)
        if "updates" in arrays:
            self.updates = int(arrays["updates"][0])

    # ------------------------------------------------------------------ serving

    async def stream(self, q: Query) -> AsyncIterator[tuple[str, LevelOutput | None]]:
        if self.task.kind != "generate":
            yield "", await self.predict(q)
            return
        backend = self._need_backend()
        t0 = time.perf_counter()
        stop = threading.Event()
        final: LMResult | None = None
        emb = await self.prompt_embedding(q)
        check = _abort_check(q, emb)
        try:
            async for delta, r in in_thread(
                lambda: backend.iter_generate(
                    q.messages, q.max_tokens, q.temperature, stop=stop, hidden=True, abort=check
                )
            ):
                if r is not None:
                    final = r
                elif delta:
                    yield delta, None
        finally:
            stop.set()  # the client went away: let the model stop generating
        assert final is not None
        out = self.to_output(final, (time.perf_counter() - t0) * 1000)
        out.embedding = emb
        yield "", out

    async def predict(self, q: Query) -> LevelOutput:
        backend = self._need_backend()
        t0 = time.perf_counter()
        if self.task.kind == "classify":
            assert self.matcher is not None
            matcher = self.matcher
            messages = await self.few_shot(q)
            r = await anyio.to_thread.run_sync(lambda: backend.classify(messages, matcher))
        else:
            check = _abort_check(q, await self.prompt_embedding(q))
            stop = threading.Event()
            try:
                # a request past its deadline stops waiting at once, and the model stops at
                # its next token: left to finish, a long answer held the model (and its lock)
                # for the requests after it
                r = await anyio.to_thread.run_sync(
                    lambda: backend.generate(
                        q.messages,
                        q.max_tokens,
                        q.temperature,
                        hidden=True,
                        abort=check,
                        stop=stop,
                    ),
                    abandon_on_cancel=True,
                )
            finally:
                stop.set()
        out = self.stacked(self.to_output(r, (time.perf_counter() - t0) * 1000), q)
        out.embedding = await self.prompt_embedding(q)
        return out


class OpenAILevel(_LMLevel):
    kind = "openai"

    def __init__(self, cfg: LevelConfig, task: TaskConfig, backend: OpenAIBackend) -> None:
        super().__init__(cfg, task)
        self.backend = backend
        # the last level's answer is final, so its token log-probs feed no policy
        self.final = cfg.name == task.levels[-1].name

    def _logprobs(self, q: Query) -> bool:
        return q.want_logprobs or not self.final

    async def stream(self, q: Query) -> AsyncIterator[tuple[str, LevelOutput | None]]:
        if self.task.kind != "generate":
            yield "", await self.predict(q)
            return
        t0 = time.perf_counter()
        try:
            async for delta, r in self.backend.stream(
                q.messages, q.max_tokens, q.temperature, q.deadline, self._logprobs(q)
            ):
                if r is not None:
                    yield "", self.to_output(r, (time.perf_counter() - t0) * 1000)
                elif delta:
                    yield delta, None
        except SilentStreamError:  # nothing was sent: ask once more, plainly, to learn why
            yield "", await self.predict(q)

    async def predict(self, q: Query) -> LevelOutput:
        t0 = time.perf_counter()
        if self.task.kind == "classify":
            assert self.matcher is not None
            r = await self.backend.classify(q.messages, self.matcher, deadline=q.deadline)
        else:
            r = await self.backend.generate(
                q.messages, q.max_tokens, q.temperature, q.deadline, self._logprobs(q)
            )
        out = self.to_output(r, (time.perf_counter() - t0) * 1000)
        out.embedding = await self.prompt_embedding(q)
        return out


class PrefixAbort:
    """The level's early-abort head asked about a prefix, with the prompt's embedding."""

    def __init__(self, abort: EarlyAbort, embedding: np.ndarray | None) -> None:
        self.abort, self.embedding, self.every = abort, embedding, abort.every

    def __call__(
        self, hidden: np.ndarray | None, token_logprobs: list[float], entropies: list[float]
    ) -> bool:
        return self.abort.should_abort(
            self.abort.vector(hidden, self.embedding, token_logprobs, entropies)
        )


def _abort_check(q: Query, embedding: np.ndarray | None) -> PrefixAbort | None:
    """The walk puts the policy's abort head in ``q.shared["abort"]`` when it may stop."""
    abort = q.shared.get("abort")
    return None if abort is None else PrefixAbort(abort, embedding)
