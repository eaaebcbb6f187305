"""GGUF causal LMs run in-process by llama-cpp-python, with per-token log-probabilities.

Log-probabilities come from our own decode loop reading the last position's logits, not from
``logits_all`` (5-10x slower here). For classify tasks one forward pass gives the next-token
distribution over the label words and, for free, the final hidden state of the last prompt token
(embeddings are switched on only for that one token), which learned levels use as features.
A llama context is not thread-safe, so every call holds the backend's lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from cascade.backends.base import (
    BackendError,
    ContextLengthError,
    LMResult,
    entropy_of_logprobs,
    model_thread,
)
from cascade.prompts import LabelMatcher, Message

_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)


class LlamaBackend:
    """One GGUF model loaded once and shared by every level that names it."""

    def __init__(
        self,
        model_path: Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        top_k_entropy: int = 20,
        name: str | None = None,
    ) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not model_path.is_file():
            raise BackendError(
                f"model file {model_path} not found; run `cascade-gateway models fetch`"
            )
        self._lc = llama_cpp
        self.name = name or model_path.stem
        self.path = model_path
        self._llm = llama_cpp.Llama(
            str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
            verbose=False,
        )
        self._ctx = self._llm._ctx.ctx
        llama_cpp.llama_set_embeddings(self._ctx, False)
        self._lock = threading.Lock()
        self.top_k = top_k_entropy
        self.n_ctx = n_ctx
        self.n_vocab = self._llm.n_vocab()
        self.n_embd = self._llm.n_embd()
        meta = self._llm.metadata
        eos_id = self._llm.token_eos()
        eos = self._llm.detokenize([eos_id], special=True).decode("utf-8", "replace")
        bos_id = self._llm.token_bos()
        bos = self._llm.detokenize([bos_id], special=True).decode("utf-8", "replace")
        template = meta.get("tokenizer.chat_template") or _FALLBACK_TEMPLATE
        self._format = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        self._vocab_text: list[str] | None = None
        self._label_tokens: dict[tuple[tuple[str, str], ...], list[tuple[str, np.ndarray]]] = {}

    # ------------------------------------------------------------------ prompt and tokens

    def render(self, messages: list[Message]) -> str:
        return self._format(messages=messages).prompt

    def tokenize(self, prompt: str) -> list[int]:
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def _is_eog(self, tok: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self._llm._model.vocab, tok))

    def _label_ids(self, matcher: LabelMatcher) -> list[tuple[str, np.ndarray]]:
        """Token ids that mean each label (whole vocabulary scanned once per label set)."""
        key = tuple(sorted(matcher.words.items()))
        if key not in self._label_tokens:
            if self._vocab_text is None:
                self._vocab_text = [
                    self._llm.detokenize([i]).decode("utf-8", "ignore") for i in range(self.n_vocab)
                ]
            ids: dict[str, list[int]] = {lab: [] for lab in matcher.labels}
            for i, t in enumerate(self._vocab_text):
                lab = matcher.match_token(t)
                if lab is not None:
                    ids[lab].append(i)
            missing = [lab for lab, v in ids.items() if not v]
            if missing:
                raise BackendError(f"{self.name}: no token in the vocabulary means {missing}")
            self._label_tokens[key] = [(lab, np.array(v)) for lab, v in ids.items()]
        return self._label_tokens[key]

    # ------------------------------------------------------------------ decoding

    def _prefill(
        self, tokens: list[int], want_hidden: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Evaluate ``tokens`` reusing the cached KV prefix; return last logits (and hidden)."""
        llm, lc = self._llm, self._lc
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(
                f"{self.name}: prompt of {len(tokens)} tokens does not fit the context of "
                f"{self.n_ctx}"
            )
        prefix = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens], tokens, strict=False):
            if a != b:
                break
            prefix += 1
        prefix = min(prefix, len(tokens) - 1)
        llm.n_tokens = prefix
        llm.eval(tokens[prefix:-1])
        if want_hidden:
            lc.llama_set_embeddings(self._ctx, True)
        try:
            llm.eval(tokens[-1:])
            logits = np.ctypeslib.as_array(
                lc.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,)
            ).astype(np.float32)
            hidden = None
            if want_hidden:
                hidden = np.ctypeslib.as_array(
                    lc.llama_get_embeddings_ith(self._ctx, -1), shape=(self.n_embd,)
                ).astype(np.float32)
        finally:
            if want_hidden:
                lc.llama_set_embeddings(self._ctx, False)
        return logits, hidden

    def _step(self, token: int, hidden_sum: np.ndarray | None = None) -> np.ndarray:
        """Evaluate one generated token; with ``hidden_sum``, add its final hidden state."""
        llm, lc = self._llm, self._lc
        if llm.n_tokens + 1 >= self.n_ctx:
            raise _ContextFullError
        if hidden_sum is None:
            llm.eval([token])
        else:
            lc.llama_set_embeddings(self._ctx, True)
            try:
                llm.eval([token])
                hidden_sum += np.ctypeslib.as_array(
                    lc.llama_get_embeddings_ith(self._ctx, -1), shape=(self.n_embd,)
                )
            finally:
                lc.llama_set_embeddings(self._ctx, False)
        return np.ctypeslib.as_array(
            lc.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,)
        ).astype(np.float32)

    def classify(self, messages: list[Message], matcher: LabelMatcher) -> LMResult:
        """Next-token distribution over the label words, plus the last hidden state."""
        model_thread()
        t0 = time.perf_counter()
        label_ids = self._label_ids(matcher)
        tokens = self.tokenize(self.render(messages))
        with self._lock:
            logits, hidden = self._prefill(tokens, want_hidden=True)
        lsm = logits - np.logaddexp.reduce(logits)
        mass = {lab: float(np.exp(lsm[ids]).sum()) for lab, ids in label_ids}
        total = sum(mass.values())
        top = int(np.argmax(lsm))
        text = self._llm.detokenize([top]).decode("utf-8", "replace")
        top_k = np.argpartition(-lsm, self.top_k)[: self.top_k] if self.top_k else np.array([top])
        return LMResult(
            text=text,
            model=self.name,
            token_logprobs=[float(lsm[top])],
            entropies=[entropy_of_logprobs(lsm[top_k])],
            label_probs={lab: v / total for lab, v in mass.items()} if total > 0 else None,
            label_mass=total,
            hidden=hidden,
            finish_reason="length",
            latency_ms=(time.perf_counter() - t0) * 1000,
        )

    def generate(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        hidden: bool = False,
        abort: AbortCheck | None = None,
        stop: threading.Event | None = None,
    ) -> LMResult:
        """Generate text and record each chosen token's log-probability and step entropy.
        Setting ``stop`` ends it at the next token (its request gave up waiting)."""
        t0 = time.perf_counter()
        pieces = list(
            self.iter_generate(
                messages, max_tokens, temperature, seed, stop=stop, hidden=hidden, abort=abort
            )
        )
        result = pieces[-1][1] if pieces else None
        assert result is not None
        result.latency_ms = (time.perf_counter() - t0) * 1000
        return result

    def iter_generate(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        stop: threading.Event | None = None,
        hidden: bool = False,
        abort: AbortCheck | None = None,
    ) -> Iterator[tuple[str, LMResult | None]]:
        """Yield (text delta, None) per token, then ("", final result) once at the end.

        Setting ``stop`` ends generation early (the client went away). With ``hidden`` the
        result carries the final hidden state at the last prompt token and its mean over the
        generated tokens (the deferral rules' view of the model's own state). ``abort`` is
        asked after the prompt and then every ``abort.every`` tokens whether to give up (the
        answer is going to be deferred anyway): finish_reason is then "aborted".
        """
        model_thread()
        t0 = time.perf_counter()
        tokens = self.tokenize(self.render(messages))
        rng = np.random.default_rng(seed)
        out_ids: list[int] = []
        toks: list[str] = []
        lps: list[float] = []
        ents: list[float] = []
        finish = "length"
        emitted = b""
        want_hidden = hidden or abort is not None
        hidden_sum = np.zeros(self.n_embd, dtype=np.float64) if want_hidden else None
        times: list[float] = []
        with self._lock:
            logits, h_prompt = self._prefill(tokens, want_hidden=want_hidden)
            for step in range(max_tokens):
                if stop is not None and stop.is_set():
                    finish = "cancelled"
                    break
                if abort is not None and step % abort.every == 0 and abort(h_prompt, lps, ents):
                    finish = "aborted"
                    break
                lsm = logits - np.logaddexp.reduce(logits)
                if temperature <= 0:
                    tok = int(np.argmax(lsm))
                else:
                    z = lsm / temperature
                    p = np.exp(z - np.logaddexp.reduce(z))
                    tok = int(rng.choice(self.n_vocab, p=p / p.sum()))
                if self._is_eog(tok):
                    finish = "stop"
                    break
                if self.top_k:
                    k = np.argpartition(-lsm, self.top_k)[: self.top_k]
                    ents.append(entropy_of_logprobs(lsm[k]))
                lps.append(float(lsm[tok]))
                times.append((time.perf_counter() - t0) * 1000)
                out_ids.append(tok)
                toks.append(self._llm.detokenize([tok]).decode("utf-8", "replace"))
                text_now = self._llm.detokenize(out_ids)
                # emit only complete UTF-8 characters
                try:
                    delta = text_now[len(emitted) :].decode("utf-8")
                except UnicodeDecodeError:
                    delta = None
                if delta:
                    emitted = text_now
                    yield delta, None
                try:
                    logits = self._step(tok, hidden_sum)
                except _ContextFullError:
                    finish = "length"
                    break
        text = self._llm.detokenize(out_ids).decode("utf-8", "replace")
        yield (
            "",
            LMResult(
                text=text,
                model=self.name,
                token_logprobs=lps,
                tokens=toks,
                entropies=ents if self.top_k else None,
                hidden=h_prompt,
                hidden_gen=None
                if hidden_sum is None or not out_ids
                else (hidden_sum / len(out_ids)).astype(np.float32),
                token_ms=times,
                finish_reason=finish,
            ),
        )


class _ContextFullError(Exception):
    pass


class AbortCheck(Protocol):
    """Asked during generation whether to stop: the prompt's hidden state and the token
    log-probabilities and entropies so far. ``every``: how many tokens between asks."""

    every: int

    def __call__(
        self, hidden: np.ndarray | None, token_logprobs: list[float], entropies: list[float]
    ) -> bool: ...
