"""Outputs never drop rows silently (issue 22): a run onto an output that holds rows of files that
are not its inputs (a subfolder onto the whole library's output, files deleted since) is refused
before any model loads, unless `--update` keeps those rows (`--prune` dropping the ones of files
gone from disk) or `--force` replaces the output. For `tag` (.csv) and `embed` (.npy, .parquet),
with the tiny checkpoint, a local probe and real audio files, through the real command in-process.

Tree (cwd = the test's folder): lib/a.wav, lib/new/n0.wav, lib/new/n1.wav, lib/z.wav, discovered
in that order, so the subfolder's rows sit between the others in a full output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, write_audio
from probes import openmic_probe

from matpac_cli.outputs.readers import read_embeddings
from matpac_cli.outputs.tag_readers import read_tags

FULL = ["lib/a.wav", "lib/new/n0.wav", "lib/new/n1.wav", "lib/z.wav"]
OUTS = ["tags.csv", "emb.npy", "emb.parquet"]


@pytest.fixture()
def library(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(FULL):
        write_audio(tmp_path / name, 0.6 + 0.1 * i, seed=i)
    openmic_probe(tmp_path)
    return tmp_path


def run(capsys, tiny: Path, out: str, inputs: str, *extra: str) -> tuple[int, str]:
    """`matpac tag` for a tags file, `matpac embed` for a matrix: (exit status, stderr)."""
    if Path(out).name.startswith("tags"):
        args = ["tag", inputs, "--out", out, "--head", "./openmic.pth", "--top-k", "2"]
    else:
        args = ["embed", inputs, "--out", out]
    rc, _, err = cli(capsys, *args, "--model", tiny, "--device", "cpu", *extra)
    return rc, err


def files(out: str) -> list[str]:
    """The files an output has rows of, in its order (a tag output: each file's rows together)."""
    if out.startswith("tags"):
        return read_tags(Path(out)).files
    return read_embeddings(Path(out)).paths


def rows(out: str) -> dict[str, object]:
    """Each file's rows: its tag rows, or its embedding."""
    if out.startswith("tags"):
        return {f: [r for r in read_tags(Path(out)).rows if r["path"] == f] for f in files(out)}
    emb = read_embeddings(Path(out))
    return dict(zip(emb.paths, np.array(emb.matrix)))


def written(out: str) -> dict[str, bytes]:
    """The bytes of every file of the output (the matrix, its index, its manifest)."""
    names = [out, f"{out}.manifest.json"] if out.startswith("tags") else [out, "emb.csv", "emb.manifest.json"]
    return {n: Path(n).read_bytes() for n in names if Path(n).exists()}


def refused(rc: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("matpac: error: "), err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("out", OUTS)
def test_subfolder_onto_the_full_output_is_refused_then_update_keeps_every_row(library, tiny, capsys, out):
    """(Regression: the subfolder's run rewrote the output with its own 2 files, exit 0, no word.)"""
    assert run(capsys, tiny, out, "lib", "-q")[0] == 0
    before, full = written(out), rows(out)
    assert files(out) == FULL

    # refused before the model is even looked at: a --model that no longer exists is not reached
    rc, err = run(capsys, library / "gone.pt", out, "lib/new")
    refused(rc, err, f"{out} holds rows of 2 file(s) that are not inputs of this run", "--update", "--force")
    assert written(out) == before

    write_audio(library / "lib/new/n2.wav", 0.5, seed=9)  # this run adds a file
    rc, err = run(capsys, tiny, out, "lib/new", "--update")
    assert rc == 0, err
    assert "kept 2 row(s) of earlier files" in err
    assert files(out) == ["lib/a.wav", "lib/z.wav", "lib/new/n0.wav", "lib/new/n1.wav", "lib/new/n2.wav"]
    merged = rows(out)
    for name in FULL:  # the kept rows and the reused ones are the earlier rows, each once
        np.testing.assert_equal(merged[name], full[name])
    counts = json.loads(Path(f"{out}.manifest.json" if out.startswith("tags") else "emb.manifest.json").read_text())
    assert counts["counts"] == {"computed": 1, "reused": 2, "failed": 0, "kept": 2, "pruned": 0}

    rc, err = run(capsys, tiny, out, "lib/new")  # the kept rows are still the output's: still refused
    refused(rc, err, "holds rows of 2 file(s)")


@pytest.mark.parametrize("out", OUTS)
def test_update_with_prune_drops_the_rows_of_files_gone_from_disk(library, tiny, capsys, out):
    assert run(capsys, tiny, out, "lib", "-q")[0] == 0
    (library / "lib/z.wav").unlink()
    rc, err = run(capsys, tiny, out, "lib")  # the same command after a deletion drops a row: said
    refused(rc, err, "holds rows of 1 file(s)", "1 of them gone from disk", "--update with --prune")

    rc, err = run(capsys, tiny, out, "lib/new", "--update")  # kept, gone or not, without --prune
    assert rc == 0, err
    assert files(out) == ["lib/a.wav", "lib/z.wav", "lib/new/n0.wav", "lib/new/n1.wav"]

    rc, err = run(capsys, tiny, out, "lib/new", "--update", "--prune")
    assert rc == 0, err
    assert "pruned 1 row(s) of files gone from disk" in err and "kept 1 row(s)" in err
    assert files(out) == ["lib/a.wav", "lib/new/n0.wav", "lib/new/n1.wav"]
    assert run(capsys, tiny, out, "lib", "-q")[0] == 0  # every row is of an input again


@pytest.mark.parametrize("out", OUTS)
def test_the_same_command_or_more_inputs_are_never_refused(library, tiny, capsys, out):
    assert run(capsys, tiny, out, "lib/new", "-q")[0] == 0
    before = written(out)[out]
    rc, err = run(capsys, tiny, out, "lib/new")
    assert rc == 0 and "2 reused" in err, err
    assert written(out)[out] == before
    rc, err = run(capsys, tiny, out, "lib")  # a superset of the output's files
    assert rc == 0 and "2 reused" in err, err
    assert files(out) == FULL
    rc, err = run(capsys, tiny, out, "lib/new", "--force")  # --force replaces, as it did
    assert rc == 0, err
    assert files(out) == ["lib/new/n0.wav", "lib/new/n1.wav"]


@pytest.mark.parametrize("out", OUTS)
def test_the_rows_are_read_from_the_output_itself_whatever_lies_beside_it(library, tiny, capsys, out):
    """An output is its own record: matpac keeps nothing else beside it (the per-output journal
    that once did is gone, and one left by an older matpac is neither read nor needed), so a
    subfolder run onto it is refused with the count its rows give."""
    assert run(capsys, tiny, out, "lib", "-q")[0] == 0
    assert not list(Path().glob(f"{out}.journal"))
    Path(f"{out}.journal").write_bytes(b"an older matpac's journal, or anything")
    rc, err = run(capsys, tiny, out, "lib/new")
    refused(rc, err, f"{out} holds rows of 2 file(s) that are not inputs of this run")
    rc, err = run(capsys, tiny, out, "lib/new", "--update")
    assert rc == 0 and "kept 2 row(s)" in err, err
    assert Path(f"{out}.journal").read_bytes() == b"an older matpac's journal, or anything"


@pytest.mark.parametrize("out", OUTS)
def test_rows_named_with_a_tilde_are_the_same_files(library, tiny, capsys, monkeypatch, out):
    """A quoted `~/...` input is named as given (`~/lib/a.wav`) and opened in the home folder: the
    same command again is the same files, never a refusal."""
    monkeypatch.setenv("HOME", str(library))
    assert run(capsys, tiny, out, "~/lib", "-q")[0] == 0
    assert files(out)[0] == "~/lib/a.wav"
    rc, err = run(capsys, tiny, out, "~/lib")
    assert rc == 0 and "0 done, 4 reused" in err, err


def test_update_keeps_rows_as_they_were_cut_so_a_new_cut_is_refused(library, tiny, capsys):
    """Kept rows are copied as written (top 2 labels each): rows cut another way beside them would
    make an output its manifest cannot describe."""
    assert run(capsys, tiny, "tags.csv", "lib", "-q")[0] == 0  # --top-k 2
    rc, err = run(capsys, tiny, "tags.csv", "lib/new", "--update", "--top-k", "3")
    refused(rc, err, "--top-k", "--update keeps its rows as they are")
    rc, err = run(capsys, tiny, "tags.csv", "lib/new", "--update", "--top-k", "2")
    assert rc == 0, err


@pytest.mark.parametrize("out", ["tags.csv", "emb.npy"])
def test_rows_written_from_another_folder_are_the_same_files(library, tiny, capsys, monkeypatch, out):
    """A row's path is relative to the folder its run ran in (the manifest's `cwd`), not to the
    folder of the next run: the same files named from elsewhere are never taken for others."""
    (library / "elsewhere").mkdir()
    (library / "elsewhere" / "openmic.pth").write_bytes((library / "openmic.pth").read_bytes())
    monkeypatch.chdir(library / "elsewhere")
    rc, err = run(capsys, tiny, f"../{out}", "../lib", "-q")
    assert rc == 0, err
    monkeypatch.chdir(library)
    assert files(out)[0] == "../lib/a.wav"
    rc, err = run(capsys, tiny, out, "lib")  # the same four files, named from here
    assert rc == 0 and "0 done, 4 reused" in err, err
    assert files(out) == FULL


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--prune"], ["--prune", "give --update as well"]),
        (["--update", "--force"], ["--update", "--force", "give one of them"]),
    ],
)
@pytest.mark.parametrize("out", ["tags.csv", "emb.npy"])
def test_prune_needs_update_and_update_is_not_force(library, capsys, out, extra, words):
    rc, err = run(capsys, library / "gone.pt", out, "lib", *extra)
    refused(rc, err, *words)
    assert not Path(out).exists()


def test_the_python_api_names_the_settings(library, predictor):
    from matpac_cli import EmbedConfig, OutputError, UsageError, discover, embed
    from matpac_cli.cli._errors import flagged
    from matpac_cli.jobs.embed import check_config

    with pytest.raises(UsageError) as info:
        check_config(EmbedConfig(out=Path("emb.npy"), prune=True))
    assert info.value.settings == ("prune", "update") and "--" not in str(info.value)
    embed(discover(["lib"]), predictor, EmbedConfig(out=Path("emb.npy")))
    with pytest.raises(OutputError) as info:
        embed(discover(["lib/new"]), predictor, EmbedConfig(out=Path("emb.npy")))
    assert "use `update` to keep them" in str(info.value) and "`force`" in str(info.value)
    assert "use --update to keep them" in flagged(info.value)
    summary = embed(discover(["lib/new"]), predictor, EmbedConfig(out=Path("emb.npy"), update=True))
    assert (summary.kept, summary.pruned, summary.reused) == (2, 0, 2)
    assert files("emb.npy") == ["lib/a.wav", "lib/z.wav", "lib/new/n0.wav", "lib/new/n1.wav"]


@pytest.mark.parametrize("out", ["emb.npy", "emb.parquet"])
def test_the_rows_facts_and_vectors_are_made_only_for_the_rows_update_keeps(library, tiny, capsys, out, monkeypatch):
    """A re-run read every row of the output as its facts and vector (half a second at 100,000
    rows) to ask only which files the rows are of: they are made where `update` keeps a row."""
    from matpac_cli.outputs import earlier

    made = []
    payload = earlier._Index.payload
    monkeypatch.setattr(earlier._Index, "payload", lambda self, i: made.append(i) or payload(self, i))
    assert run(capsys, tiny, out, "lib", "-q")[0] == 0
    before = rows(out)
    assert run(capsys, tiny, out, "lib", "-q")[0] == 0  # nothing new
    assert run(capsys, tiny, out, "lib/new", "-q", "--force")[0] == 0
    assert made == []
    assert run(capsys, tiny, out, "lib", "-q")[0] == 0
    assert run(capsys, tiny, out, "lib/new", "-q", "--update")[0] == 0
    assert made == [0, 3]  # lib/a.wav and lib/z.wav, kept
    assert files(out) == ["lib/a.wav", "lib/z.wav", "lib/new/n0.wav", "lib/new/n1.wav"]
    after = rows(out)
    for name in FULL:
        np.testing.assert_array_equal(after[name], before[name])
