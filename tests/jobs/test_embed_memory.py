"""A long `embed` run's memory: the vectors of the files the library has committed are let go as
the run goes and taken back from the library as the output is written, so what the run holds
grows by a file's name and facts, not by its vector (15 KB at 3840 values, 15 GB at a million)."""

from __future__ import annotations

import numpy as np
from conftest import held_per_file, write_audio


def test_a_long_run_holds_its_files_facts_not_their_vectors(tmp_path, wide, monkeypatch):
    from matpac_cli.jobs import embed
    from matpac_cli.library import store

    monkeypatch.setattr(embed, "SHED_FILES", 16, raising=False)  # at this scale what 512 are at a catalogue's
    monkeypatch.setattr(store, "COMMIT_MIN_S", 0.0)  # and commits as often
    for i in range(240):
        write_audio(tmp_path / "in" / f"f{i:03d}.wav", 0.2, seed=i)
    per_file = held_per_file(tmp_path / "in", tmp_path / "e.npy", wide, tmp_path / "lib")
    assert per_file < wide.dims.embed_dim * 4 / 3, f"{per_file:.0f} bytes a file (a vector: {wide.dims.embed_dim * 4})"
    # the rows taken back from the library are the vectors computed
    held_per_file(tmp_path / "in", tmp_path / "plain.npy", wide, False)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), np.load(tmp_path / "plain.npy"))
