"""The oneDNN fast path gives the plain `nn.Linear` encoder's numbers (to 1e-5), both against
each other and, through the whole predictor, against the slow reference implementation (which kind a load takes:
tests/encoder/test_linear_choice.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import make_checkpoint

from matpac_cli.encoder import onednn
from matpac_cli.encoder.vit import MatpacEncoder

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear ops")


@pytest.fixture(scope="module")
def state():
    return make_checkpoint(width=128, depth=2, n_t=608, seed=5)


def _mel(b: int = 3, frames: int = 608, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 80, frames, generator=torch.Generator().manual_seed(seed))


@needs_onednn
def test_packed_encoder_equals_plain_linear(state):
    plain = MatpacEncoder.from_state_dict(state)
    fast = MatpacEncoder.from_state_dict(state)
    assert onednn.pack(fast, "onednn") and fast.linear_kind == "onednn"
    assert isinstance(fast.student_encoder.blocks[0].mlp.fc1, onednn.OneDnnLinear)
    mel = _mel()
    widths = torch.tensor([38, 20, 5])  # a padded batch: masked keys take the same path
    with torch.inference_mode():
        a = plain(mel, widths, layers=(1, 2))
        b = fast(mel, widths, layers=(1, 2))
    for layer in (1, 2):
        diff = (a[layer] - b[layer]).abs().max().item()
        assert diff <= 1e-5, (layer, diff)
        assert not torch.equal(a[layer], b[layer])  # really another code path


def test_plain_is_kept_when_asked(state, monkeypatch):
    monkeypatch.setenv("MATPAC_CPU_LINEAR", "plain")
    enc = MatpacEncoder.from_state_dict(state)
    assert not onednn.pack(enc) and enc.linear_kind == "plain"


def test_bf16_or_gpu_encoders_are_not_packed(state):
    enc = MatpacEncoder.from_state_dict(state).to(torch.bfloat16)
    assert not onednn.pack(enc, "onednn")


@pytest.mark.parametrize("kind", ["onednn", "plain"])
def test_predictor_matches_reference_with_either_kind(state, tmp_path, monkeypatch, kind):
    import reference as R

    from matpac_cli.inference.predictor import Predictor

    if kind == "onednn" and not onednn.available():
        pytest.skip("this torch build has no oneDNN linear ops")
    monkeypatch.setenv("MATPAC_CPU_LINEAR", kind)
    path = tmp_path / "m.pt"
    torch.save(state, path)
    pred = Predictor.load(str(path), device="cpu")
    assert pred.encoder.linear_kind == kind
    wave = 0.1 * np.random.default_rng(1).standard_normal(16000 * 9).astype(np.float32)
    got = pred.embed(wave, 16000)
    want = R.reference_embedding(state, wave, 16000)
    assert np.abs(got - want).max() <= 1e-5
