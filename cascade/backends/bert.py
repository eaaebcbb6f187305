"""A lean forward pass for BERT-style encoders (all-MiniLM-L6-v2): the same numbers as
transformers' ``BertModel``, in a third less time on one short sentence.

On a 2-core CPU a single tweet through ``BertModel`` took ~13 ms, of which ~5 ms was the
module machinery around the matrix products (hooks, attention-implementation dispatch, mask
building); this does the products alone: query, key and value in one matrix, PyTorch's fused
attention, layer norms by ``torch.nn.functional``. ``EncoderBackend`` checks it against
``BertModel`` on probe sentences when it loads and keeps ``BertModel`` if they differ.

With one short text the products are bound by reading the weights, not by arithmetic: so
``precision`` may halve (bfloat16: the same directions to a cosine of 0.9999 here) or quarter
(int8, per output channel, activations quantized on the fly: cosine >= 0.98) what each
forward pass reads. Measured on a tweet, one thread: ~15 ms float32, ~9 ms bfloat16, ~5 ms
int8. Layer norms, softmax and pooling stay in float32 for int8, in bfloat16 for bfloat16.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

#: The linear layers of one transformer block, by the key prefix ``__init__`` gives them.
LINEARS = ("qkv", "o", "i", "f")


class LeanBert:
    """``__call__(input_ids, attention_mask)`` -> last hidden state, like ``BertModel``."""

    def __init__(self, weights: dict[str, Any], config: Any, precision: str = "float32") -> None:
        import torch

        if precision not in ("float32", "bfloat16", "int8"):
            raise ValueError(f"precision must be float32, bfloat16 or int8, got {precision!r}")
        self._torch = torch
        self.precision = precision
        pre = "" if "embeddings.word_embeddings.weight" in weights else "bert."

        def w(key: str) -> Any:
            return weights[pre + key]

        self.dim = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        self.eps = float(config.layer_norm_eps)
        self.word = w("embeddings.word_embeddings.weight")
        self.pos = w("embeddings.position_embeddings.weight")
        self.type0 = w("embeddings.token_type_embeddings.weight")[0]
        self.emb_ln = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(int(config.num_hidden_layers)):
            p = f"encoder.layer.{i}."
            parts = ("query", "key", "value")
            self.layers.append(
                {
                    "qkv_w": torch.cat([w(f"{p}attention.self.{n}.weight") for n in parts]),
                    "qkv_b": torch.cat([w(f"{p}attention.self.{n}.bias") for n in parts]),
                    "o_w": w(p + "attention.output.dense.weight"),
                    "o_b": w(p + "attention.output.dense.bias"),
                    "ln1": (
                        w(p + "attention.output.LayerNorm.weight"),
                        w(p + "attention.output.LayerNorm.bias"),
                    ),
                    "i_w": w(p + "intermediate.dense.weight"),
                    "i_b": w(p + "intermediate.dense.bias"),
                    "f_w": w(p + "output.dense.weight"),
                    "f_b": w(p + "output.dense.bias"),
                    "ln2": (w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias")),
                }
            )

        if precision == "bfloat16":
            for lay in self.layers:
                for k, v in list(lay.items()):
                    half = tuple(t.bfloat16() for t in v) if isinstance(v, tuple) else v.bfloat16()
                    lay[k] = half
        elif precision == "int8":
            for lay in self.layers:
                for k in LINEARS:
                    lay[f"{k}_q"] = _int8(torch, lay.pop(f"{k}_w"), lay.pop(f"{k}_b"))

    @classmethod
    def load(cls, path: Path, config: Any, precision: str = "float32") -> LeanBert | None:
        """None where the model is not a plain BERT this reproduces."""
        if (
            getattr(config, "model_type", None) != "bert"
            or getattr(config, "position_embedding_type", "absolute") != "absolute"
            or getattr(config, "hidden_act", None) != "gelu"
            or not (path / "model.safetensors").is_file()
        ):
            return None
        from safetensors.torch import load_file

        try:
            return cls(load_file(str(path / "model.safetensors")), config, precision)
        except KeyError:
            return None

    def _linear(self, x: Any, lay: dict[str, Any], name: str) -> Any:
        if self.precision != "int8":
            return self._torch.nn.functional.linear(x, lay[f"{name}_w"], lay[f"{name}_b"])
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        out = self._torch.ops.quantized.linear_dynamic(flat, lay[f"{name}_q"])
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        torch = self._torch
        f = torch.nn.functional
        b, t = input_ids.shape
        d, h = self.dim, self.heads
        x = self.word[input_ids] + self.pos[:t] + self.type0
        x = f.layer_norm(x, (d,), *self.emb_ln, self.eps)
        if self.precision == "bfloat16":
            x = x.bfloat16()
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for lay in self.layers:
            qkv = self._linear(x, lay, "qkv").view(b, t, 3, h, d // h)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            a = f.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = a.transpose(1, 2).reshape(b, t, d)
            x = f.layer_norm(self._linear(a, lay, "o") + x, (d,), *lay["ln1"], self.eps)
            y = self._linear(f.gelu(self._linear(x, lay, "i")), lay, "f")
            x = f.layer_norm(y + x, (d,), *lay["ln2"], self.eps)
        return x.float()


def _int8(torch: Any, w: Any, bias: Any) -> Any:
    """A linear layer's weight quantized per output channel (symmetric int8), packed for
    ``quantized.linear_dynamic`` (which quantizes each input on the fly)."""
    scale = (w.abs().amax(1) / 127.0).clamp(min=1e-8).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch 2.13 marks quantized tensors for removal later
        warnings.simplefilter("ignore", UserWarning)
        qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qw, bias)
