"""The encoder's lean forward pass, in float32 and at reduced precision, against transformers'
``BertModel`` on the real MiniLM weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cascade.backends import BackendPool
from cascade.backends.bert import LeanBert
from cascade.backends.encoder import EncoderBackend
from cascade.config import load_config
from tests.conftest import MODELS, write_config

MINILM = MODELS / "all-MiniLM-L6-v2"
TEXTS = [
    "Forest fire near La Ronge Sask. Canada",
    "Forest fire spreads near La Ronge, Saskatchewan",
    "I love this new coffee place downtown",
    "an uneven, often charming film about growing up",
]


@pytest.fixture(scope="module")
def float32() -> EncoderBackend:
    return EncoderBackend(MINILM)


def test_float32_lean_pass_gives_bertmodels_numbers(float32: EncoderBackend) -> None:
    assert isinstance(float32.lean, LeanBert)
    want = float32.embed(TEXTS, forward=float32.model)
    assert np.abs(float32.embed(TEXTS) - want).max() < 1e-4


@pytest.mark.parametrize(("precision", "least"), [("bfloat16", 0.999), ("int8", 0.97)])
def test_reduced_precision_keeps_the_direction(
    float32: EncoderBackend, precision: str, least: float
) -> None:
    enc = EncoderBackend(MINILM, precision=precision)
    assert isinstance(enc.lean, LeanBert) and enc.lean.precision == precision
    got, want = enc.embed(TEXTS), float32.embed(TEXTS)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * want).sum(1).min() >= least
    # what a semantic cache reads from it: the paraphrase is the nearest, as in float32
    sims = got[1:] @ got[0]
    assert int(np.argmax(sims)) == 0 and sims[0] > 0.8 > sims[1]
    # a batch with padding gives each text what it gets alone
    alone = np.stack([enc.embed([t])[0] for t in TEXTS])
    assert (alone * got).sum(1).min() > 0.999


def test_a_reduced_precision_backend_is_named_apart(tmp_path: Path) -> None:
    """Vectors of another precision are another space: the backend's name says so (demos and
    memos keyed by it never mix them)."""
    config = load_config(write_config(tmp_path / "config.yaml", "http://127.0.0.1:9/v1"))
    fast = config.backends["minilm"].model_copy(update={"precision": "int8"})
    config = config.model_copy(update={"backends": {**config.backends, "fast": fast}})
    pool = BackendPool(config, MODELS)
    assert pool.encoder("fast").name.endswith("-int8")
    assert not pool.encoder("minilm").name.endswith("-int8")


def test_an_unknown_precision_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9/v1")
    text = path.read_text()
    assert "kind: encoder" in text
    path.write_text(text.replace("kind: encoder", "kind: encoder\n    precision: fp8", 1))
    with pytest.raises((ValidationError, ValueError), match="precision"):
        load_config(path)
    with pytest.raises(ValueError, match="precision"):
        LeanBert({}, None, precision="fp8")
