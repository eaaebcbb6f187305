"""Sentence embeddings from a local transformers encoder (all-MiniLM-L6-v2 by default).

Loaded from a directory fetched by ``cascade-gateway models fetch``, with the hub switched off:
nothing is downloaded at run time. Mean pooling and L2 normalisation, as sentence-transformers
does for this model.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cascade.backends.base import BackendError, model_thread
from cascade.backends.bert import LeanBert


class EncoderBackend:
    def __init__(
        self,
        path: Path,
        max_length: int = 128,
        name: str | None = None,
        precision: str = "float32",
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if not (path / "config.json").is_file():
            raise BackendError(
                f"encoder directory {path} not found; run `cascade-gateway models fetch`"
            )
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self._torch = torch
        self.name = name or path.name
        self.path = path
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()
        self.lean: LeanBert | None = None
        lean = LeanBert.load(path, self.model.config, precision)
        if lean is not None and self._agrees(lean):
            self.lean = lean
        elif precision != "float32":
            raise BackendError(
                f"encoder {self.name}: precision {precision} needs a plain BERT model whose "
                "reduced-precision forward pass agrees with float32 on the probe sentences; "
                "this one does not: use precision float32"
            )

    #: Sentences the lean forward pass must embed as ``BertModel`` does before it is used.
    PROBES = (
        "warm up",
        "A storm flooded the valley overnight; rescuers are on their way.",
        "is this review positive or negative? an uneven, often charming film",
    )

    #: How close to ``BertModel``'s float32 embeddings a forward pass must come, by precision:
    #: float32 the same numbers; reduced precision the same direction (cosine).
    AGREE: ClassVar[dict[str, float]] = {"bfloat16": 0.999, "int8": 0.97}

    def _agrees(self, lean: LeanBert) -> bool:
        model, self.lean = self.model, None
        want = self.embed(list(self.PROBES), forward=model)
        got = self.embed(list(self.PROBES), forward=lean)
        if lean.precision == "float32":
            return bool(np.abs(want - got).max() < 1e-4)
        return bool((want * got).sum(1).min() >= self.AGREE[lean.precision])

    def embed(self, texts: list[str], batch_size: int = 64, forward: Any = None) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors."""
        model_thread()
        torch = self._torch
        forward = forward or self.lean or self.model
        if isinstance(forward, LeanBert) and forward.precision == "int8":
            # int8 quantizes each input on the fly over the whole batch (padding included): one
            # text at a time, so a text gets the same vector in any batch
            batch_size = 1
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(
                    texts[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                if isinstance(forward, LeanBert):
                    hidden = forward(enc["input_ids"], enc["attention_mask"])
                else:
                    hidden = forward(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out.append(pooled.numpy().astype(np.float32))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)
