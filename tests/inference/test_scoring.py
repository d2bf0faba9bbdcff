"""One scoring rule for every kind of head (inference/scoring.py).

`matpac train` reports validation figures from its head's scores and `matpac tag` later scores
embeddings with the head file it wrote: both go through `probabilities`, so the same embeddings
give the very same numbers (bit for bit), and no second copy of the rule may creep back.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

D, C = 24, 3


def reference(x, weight, bias, activation, mean=None, scale=None) -> np.ndarray:
    """The rule written here in plain numpy, independently of matpac."""
    z = np.asarray(x, dtype=np.float64)
    if mean is not None:
        z = (z - np.float64(mean)) / np.float64(scale)
    logits = z @ np.asarray(weight, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)
    if activation == "softmax":
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    return 1 / (1 + np.exp(-logits))


def features(task: str, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clip-embedding stand-ins (float32, as read from an index) with a class signal in them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (C, D))
    x = rng.normal(5, 2, (n, D))
    if task == "single":
        y = np.arange(n) % C
        x += centres[y]
    else:
        y = (rng.random((n, C)) < 0.4).astype(np.float32)
        y[np.arange(n), np.arange(n) % C] = 1
        x += y @ centres
    return x.astype(np.float32), y


@pytest.mark.parametrize("task", ["single", "multi"])
def test_tag_scores_of_a_trained_head_are_trains_validation_scores(task, tmp_path):
    """The head file `train` writes, read as `tag` reads it, scores its validation files exactly
    as `train` scored them for its figures; a drift in either path fails here."""
    from matpac_cli.checkpoints.trained_head import TrainedHead, to_bytes
    from matpac_cli.inference.heads import Head, load_trained
    from matpac_cli.jobs.probe import TrainConfig, train_probe

    x, y = features(task)
    probe = train_probe(x, y, task, C, TrainConfig(val=0.25, lrs=(1e-3,), max_epochs=5))
    trained = TrainedHead(probe.weight, probe.bias, probe.mean, probe.scale, ["a", "b", "c"], task, {"name": "t"})
    path = tmp_path / "h.safetensors"
    path.write_bytes(to_bytes(trained))
    tagged = load_trained(path, D).scores(x[probe.val_index])
    assert np.array_equal(tagged, probe.val_scores)
    assert np.array_equal(Head.from_trained(trained).scores(x[probe.val_index]), probe.val_scores)
    expected = reference(x[probe.val_index], probe.weight, probe.bias, trained.activation, probe.mean, probe.scale)
    np.testing.assert_allclose(tagged, expected, rtol=0, atol=1e-12)  # and the shared rule is the right one


def test_folds_score_through_the_same_rule():
    """Cross-validation's out-of-fold scores (the figures `--folds` prints) come from the same rule."""
    from matpac_cli.jobs.probe import TrainConfig, train_probe

    x, y = features("single", n=30)
    probe = train_probe(x, y, "single", C, TrainConfig(folds=3, lrs=(1e-3,), max_epochs=3))
    assert probe.val_scores.shape == (30, C) and np.allclose(probe.val_scores.sum(1), 1.0)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_probabilities_against_numpy(activation):
    from matpac_cli.inference.scoring import probabilities

    rng = np.random.default_rng(1)
    x = rng.normal(0, 4, (7, D)).astype(np.float32)
    w, b = rng.normal(0, 1, (C, D)).astype(np.float32), rng.normal(0, 1, C).astype(np.float32)
    mean, scale = rng.normal(0, 1, D).astype(np.float32), rng.uniform(0.5, 2, D).astype(np.float32)
    got = probabilities(x, w, b, activation, mean, scale)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference(x, w, b, activation, mean, scale), rtol=0, atol=1e-12)
    np.testing.assert_allclose(probabilities(x, w, b, activation), reference(x, w, b, activation), atol=1e-12)
    big = probabilities(x * 1e4, w, b, activation)  # large logits: no overflow, no NaN
    assert np.isfinite(big).all() and ((big >= 0) & (big <= 1)).all()


def test_registry_and_audioset_heads_score_through_the_same_rule():
    from matpac_cli.inference.heads import Head
    from matpac_cli.inference.scoring import probabilities

    rng = np.random.default_rng(2)
    w, b = rng.normal(0, 1, (C, D)), rng.normal(0, 1, C)
    mean, scale = rng.normal(0, 1, D), rng.uniform(0.5, 2, D)
    tokens = rng.normal(0, 1, (5, 4 * D)).astype(np.float32)  # 4 frequency tokens of width D
    audioset = Head("audioset", ["a", "b", "c"], "sigmoid", w, b, kind="audioset", mean=mean, scale=scale)
    pooled = tokens.astype(np.float64).reshape(5, 4, D).mean(1)
    assert np.array_equal(audioset.scores(tokens), probabilities(pooled, w, b, "sigmoid", mean, scale))
    probe = Head("p", ["a", "b", "c"], "softmax", w, b)
    assert np.array_equal(probe.scores(tokens[:, :D]), probabilities(tokens[:, :D], w, b, "softmax"))


def test_an_unknown_activation_is_a_model_error():
    from matpac_cli.errors import ModelError
    from matpac_cli.inference.scoring import probabilities

    with pytest.raises(ModelError, match="activation"):
        probabilities(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros(1), "relu")


def test_no_second_copy_of_the_scoring_rule():
    """Only inference/scoring.py turns logits into probabilities in numpy (an `np.exp`)."""
    found = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "matpac_cli").rglob("*.py")
        if "np.exp(" in p.read_text(encoding="utf-8")
    ]
    assert found == ["matpac_cli/inference/scoring.py"], found
