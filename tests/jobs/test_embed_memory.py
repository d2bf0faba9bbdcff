"""A long `embed` run's memory: the vectors of the files the library has committed are let go as
the run goes and taken back from the library as the output is written, so what the run holds
grows by a file's name and facts, not by its vector (15 KB at 3840 values, 15 GB at a million)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from conftest import write_audio
from reference import make_checkpoint


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A checkpoint as wide as the release's (3840 values a clip embedding), one layer deep."""
    from matpac_cli.inference.predictor import Predictor

    path = tmp_path_factory.mktemp("wide") / "wide.pt"
    torch.save(make_checkpoint(width=768, depth=1, n_t=608, seed=5), path)
    return Predictor.load(str(path), device="cpu", precision="fp32")


def _run(folder, out, model, library) -> list[int]:
    """`embed` of `folder` into `out`: the memory Python holds (traced) as each file is done."""
    from matpac_cli import EmbedConfig, Listeners, RunOptions, discover, embed

    items = discover([str(folder)])
    held: list[int] = []
    tracemalloc.start()
    try:
        config = EmbedConfig(out=out, library=library, options=RunOptions(batch_size=8, workers=1))
        summary = embed(
            items, model, config, Listeners(progress=lambda i, s: held.append(tracemalloc.get_traced_memory()[0]))
        )
    finally:
        tracemalloc.stop()
    assert summary.done == len(items) and not summary.failures
    return held


def test_a_long_run_holds_its_files_facts_not_their_vectors(tmp_path, wide, monkeypatch):
    from matpac_cli.jobs import embed

    monkeypatch.setattr(embed, "SHED_FILES", 16, raising=False)  # at this scale what 512 are at a catalogue's
    n = 240
    for i in range(n):
        write_audio(tmp_path / "in" / f"f{i:03d}.wav", 0.2, seed=i)
    held = _run(tmp_path / "in", tmp_path / "e.npy", wide, tmp_path / "lib")
    x = np.arange(n // 4, n)  # after the start's own allocations
    per_file = np.polyfit(x, np.array(held)[x], 1)[0]  # bytes more held for each file done
    assert per_file < wide.dims.embed_dim * 4 / 3, f"{per_file:.0f} bytes a file (a vector: {wide.dims.embed_dim * 4})"
    # the rows taken back from the library are the vectors computed
    _run(tmp_path / "in", tmp_path / "plain.npy", wide, False)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), np.load(tmp_path / "plain.npy"))
