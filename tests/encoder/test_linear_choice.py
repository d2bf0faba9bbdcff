"""Which linear layers an fp32 CPU load takes (`encoder.linear_choice`): measured once on this CPU
and kept, the vendor rule where the two kinds are close, `MATPAC_CPU_LINEAR` over both; the kept
measurement never read through a planted link, a damaged one measured again."""

from __future__ import annotations

import json

import pytest
import torch
from reference import make_checkpoint

from matpac_cli.encoder import cpu, linear_choice, onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear ops")


@pytest.fixture()
def model(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(make_checkpoint(width=128, depth=2, n_t=608, seed=5), path)
    return path


def _load(model):
    from matpac_cli.inference.predictor import Predictor

    return Predictor.load(str(model), device="cpu", precision="fp32").encoder.linear_kind


def test_the_faster_kind_wins_by_a_margin_and_the_rule_holds_when_close():
    assert linear_choice.decide({"plain": 1.0, "onednn": 0.5}, "plain") == "onednn"
    assert linear_choice.decide({"plain": 0.5, "onednn": 1.0}, "onednn") == "plain"
    assert linear_choice.decide({"plain": 1.0, "onednn": 0.97}, "plain") == "plain"
    assert linear_choice.decide({"plain": 0.97, "onednn": 1.0}, "onednn") == "onednn"


@needs_onednn
@pytest.mark.parametrize("kept", ["onednn", "plain"])
def test_a_load_measures_once_and_keeps_the_answer_for_this_cpu(model, monkeypatch, kept):
    monkeypatch.delenv("MATPAC_CPU_LINEAR", raising=False)
    first = _load(model)
    known = json.loads(linear_choice.cache_file().read_text())
    (name,) = known
    assert cpu.cpu_label() in name and torch.__version__ in name and "128x512" in name
    assert known[name]["choice"] == first and known[name]["plain_ms"] > 0 and known[name]["onednn_ms"] > 0
    known[name]["choice"] = kept  # the kept answer is what later loads take, with no timing
    linear_choice.cache_file().write_text(json.dumps(known))
    monkeypatch.setattr(linear_choice, "measure", lambda *a: pytest.fail("measured again"))
    assert _load(model) == kept


@needs_onednn
def test_the_environment_overrides_without_measuring(model, monkeypatch):
    monkeypatch.setattr(linear_choice, "measure", lambda *a: pytest.fail("measured"))
    for kind in ("plain", "onednn"):
        monkeypatch.setenv("MATPAC_CPU_LINEAR", kind)
        assert _load(model) == kind
    assert not linear_choice.cache_file().exists()


@needs_onednn
def test_a_damaged_or_planted_cache_is_measured_again_and_never_followed(model, monkeypatch, tmp_path):
    monkeypatch.delenv("MATPAC_CPU_LINEAR", raising=False)
    measured = []
    real = linear_choice.measure
    monkeypatch.setattr(linear_choice, "measure", lambda *a: measured.append(1) or real(*a))
    linear_choice.cache_file().parent.mkdir(parents=True, exist_ok=True)
    linear_choice.cache_file().write_text("{not json")
    assert _load(model) in ("plain", "onednn") and measured == [1]
    target = tmp_path / "someone-elses.json"
    target.write_text('{"theirs": 1}')
    linear_choice.cache_file().unlink()
    linear_choice.cache_file().symlink_to(target)
    assert _load(model) in ("plain", "onednn") and measured == [1, 1]
    assert target.read_text() == '{"theirs": 1}'  # replaced, not written through
    assert not linear_choice.cache_file().is_symlink()
