"""`outputs.naming`, the one home of every name derived from an output path (issue 21).

Unit tests give the mapping for each format and layer set; a source scan fails if a naming rule
is written a second time elsewhere; and real runs check that what `embed` and `tag` write is
exactly what the names say, and what the readers (search, train, report) look for.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, write_audio

from matpac_cli.errors import UsageError
from matpac_cli.outputs import naming, readers, tag_readers

D = Path("out")


# ---------------------------------------------------------------- the mapping, per format


def test_embed_npy_names_its_row_index_and_manifest():
    assert naming.embed_outputs(D / "emb.npy") == {
        "matrix": D / "emb.npy",
        "index": D / "emb.csv",
        "manifest": D / "emb.manifest.json",
    }
    assert naming.row_index(D / "emb.npy") == D / "emb.csv"
    assert naming.indexed_matrix(D / "emb.csv") == D / "emb.npy"  # the way back, for a refusal's words
    assert naming.indexed_matrix(D / "emb.CSV") == D / "emb.npy"
    assert naming.indexed_matrix(D / "emb.jsonl") is None


def test_embed_parquet_is_its_own_row_index_and_shares_the_manifest_name():
    assert naming.embed_outputs(D / "emb.parquet") == {
        "matrix": D / "emb.parquet",
        "manifest": D / "emb.manifest.json",
    }
    assert naming.row_index(D / "emb.parquet") == D / "emb.parquet"
    assert naming.row_index(D / "shards.PARQUET") == D / "shards.PARQUET"  # a reader takes any case
    assert naming.manifest_sharers(D / "emb.parquet") == [D / "emb.npy"]
    assert naming.manifest_sharers(D / "emb.npy") == [D / "emb.parquet"]


def test_what_embed_writes_is_what_a_reader_reads():
    paths = naming.embed_outputs(D / "emb.npy")
    assert naming.written(paths) == [D / "emb.npy", D / "emb.csv", D / "emb.manifest.json"]
    assert naming.embed_files(D / "emb.npy") == naming.written(paths)
    assert naming.embed_files(D / "emb.parquet") == [D / "emb.parquet", D / "emb.manifest.json"]


@pytest.mark.parametrize("out", ["emb.csv", "emb", "emb.NPY", "emb.npz"])
def test_embed_writes_only_npy_or_parquet(out):
    with pytest.raises(UsageError, match=r"out=.*written as \.npy .* or \.parquet"):
        naming.embed_outputs(D / out)


@pytest.mark.parametrize("name", ["tags.csv", "tags.jsonl", "tags.ndjson", "tags.parquet"])
def test_tag_outputs_keep_their_suffix_in_the_manifest(name):
    assert naming.tags_manifest(D / name) == D / f"{name}.manifest.json"


def test_a_trained_head_has_its_report_and_embeddings_beside_it():
    assert naming.head_report(D / "mine.safetensors") == D / "mine.report.json"
    assert naming.head_embeddings(D / "mine.safetensors") == D / "mine.emb.npy"
    assert naming.embed_outputs(naming.head_embeddings(D / "mine.safetensors"))["index"] == D / "mine.emb.csv"


def test_lock_and_temporary_names_are_hidden_beside_the_file():
    assert naming.lock_path(D / "tags.csv") == D / ".tags.csv.lock"
    assert naming.temp_path(D / "emb.npy") == D / f".emb.npy.tmp{os.getpid()}"


@pytest.mark.parametrize(
    "name, mirrored",
    [
        ("clips/a.wav", "clips/a.wav.npy"),
        ("./clips/a.wav", "clips/a.wav.npy"),
        ("../x.wav", "_up/x.wav.npy"),
        ("/tmp/x.wav", "_root/tmp/x.wav.npy"),
        ("_a/b.wav", "__a/b.wav.npy"),
    ],
)
def test_frames_files_mirror_the_input_path(name, mirrored):
    assert naming.frames_name(name) == mirrored
    assert naming.frames_file(Path("fr"), name) == Path("fr") / mirrored


def test_a_name_too_long_to_mirror_is_hashed_and_stays_in_the_folder():
    name = "d/" + "x" * 300 + ".wav"
    got = naming.frames_name(name)
    assert re.fullmatch(r"_long/[0-9a-f]{16}/x{96}\.wav\.npy", got), got
    assert naming.frames_name(name + "2") != got
    assert naming.frames_lock(Path("fr")) == Path("fr") / "frames"  # locked as fr/.frames.lock


def test_the_row_index_columns():
    assert naming.INDEX_COLUMNS == ["row", "path", "duration_s", "sample_rate", "channels", "truncated"]
    assert naming.FRAMES_COLUMNS == ["frames", "frame_s"]


# ---------------------------------------------------------------- one home


RULES = {  # what each naming rule looks like when written out by hand
    "a manifest name": r'"\.manifest\.json"',
    "a lock name": r'\.lock"\)',
    "a hidden temporary name": r'f"\.\{[^"]*\}\.tmp\{',
    "the row index columns": r"INDEX_COLUMNS\s*=",
    "the frames columns": r"FRAMES_COLUMNS\s*=",
    "a mirrored name": r"def mirror_(name|path)",
    "a row index beside a matrix": r'with_suffix\("\.(csv|npy)"\)',
    "a head's side files": r'"\.(emb\.npy|report\.json)"',
    "the embed suffixes": r'\("\.npy", "\.parquet"\)',
}
HOMES = {"matpac_cli/outputs/naming.py", "matpac_cli/sidefiles.py"}  # sidefiles: lock and temp names


def test_no_naming_rule_is_written_outside_its_home():
    found = []
    for path in sorted((REPO / "matpac_cli").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in HOMES:
            continue
        text = path.read_text()
        found += [f"{rel}: {what}" for what, pattern in RULES.items() if re.search(pattern, text)]
    assert not found, found


def test_each_rule_is_found_in_its_home():
    """The scan above looks for the right spellings: each is where the rule lives."""
    homes = "".join((REPO / p).read_text() for p in sorted(HOMES))
    missing = [what for what, pattern in RULES.items() if not re.search(pattern, homes)]
    assert not missing, missing


# ---------------------------------------------------------------- what is written is what is read


@pytest.fixture(scope="module")
def runs(ckpts, tmp_path_factory) -> Path:
    """One folder: the same clips embedded as .npy (last layer, with --frames), .npy (layer 1)
    and .parquet (--layer all, with --frames), and tagged to JSON Lines."""
    from matpac_cli.cli import main

    d = tmp_path_factory.mktemp("naming")
    write_audio(d / "clips" / "a.wav", 0.8, seed=0)
    write_audio(d / "clips" / "_sub" / "b.wav", 0.6, seed=1)
    shutil.copy(ckpts["tiny608"], d / "tiny.pt")
    g = torch.Generator().manual_seed(0)
    torch.save({"weight": torch.randn(20, 640, generator=g) * 0.1, "bias": torch.zeros(20)}, d / "openmic.pth")
    common = ["clips", "--model", "tiny.pt", "--device", "cpu", "-q"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        assert main(["embed", *common, "--out", "last/emb.npy", "--frames", "last/fr"]) == 0
        assert main(["embed", *common, "--out", "one/emb.npy", "--layer", "1"]) == 0
        assert main(["embed", *common, "--out", "all/emb.parquet", "--layer", "all", "--frames", "all/fr"]) == 0
        assert main(["tag", *common, "--head", "./openmic.pth", "--out", "tags/t.jsonl"]) == 0
    return d


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("out", ["last/emb.npy", "one/emb.npy", "all/emb.parquet"])
def test_embed_writes_exactly_the_named_files_and_the_readers_find_them(runs, out):
    out = runs / out
    paths = naming.embed_outputs(out)
    frames = out.parent / "fr"
    assert _files(out.parent) - _files(frames) == set(naming.written(paths))  # no lock, no temp
    assert readers.embeddings_inputs(out) == naming.embed_files(out)
    emb = readers.read_embeddings(out)
    assert emb.paths == ["clips/_sub/b.wav", "clips/a.wav"] and emb.manifest is not None
    assert runs / emb.manifest["output"]["path"] == out  # as given: relative to where it ran
    if "index" in paths:
        assert runs / emb.manifest["output"]["index"] == naming.row_index(out)
        with open(paths["index"], newline="") as fh:
            header = next(csv.reader(fh))
        assert header[: len(naming.INDEX_COLUMNS)] == naming.INDEX_COLUMNS


@pytest.mark.parametrize("out", ["last/emb.npy", "all/emb.parquet"])
def test_the_frames_files_are_where_the_row_index_names_them(runs, out):
    out = runs / out
    frames = out.parent / "fr"
    if naming.is_parquet(out):
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        named = dict(zip(table.column("path").to_pylist(), table.column("frames").to_pylist(), strict=True))
    else:
        with open(naming.row_index(out), newline="") as fh:
            named = {r["path"]: r["frames"] for r in csv.DictReader(fh)}
    assert named == {p: naming.frames_name(p) for p in named}
    assert {frames / n for n in named.values()} | {naming.frames_record(frames)} == _files(frames)
    assert (frames / naming.frames_name("clips/_sub/b.wav")).parts[-3:] == ("clips", "__sub", "b.wav.npy")


def test_layer_sets_change_the_matrix_not_the_names(runs):
    one, last = np.load(runs / "one" / "emb.npy"), np.load(runs / "last" / "emb.npy")
    assert one.shape == last.shape and not np.array_equal(one, last)
    assert {p.name for p in _files(runs / "one")} == {"emb.npy", "emb.csv", "emb.manifest.json"}


def test_tag_writes_the_named_manifest_and_the_reader_finds_it(runs):
    out = runs / "tags" / "t.jsonl"
    assert _files(out.parent) == {out, naming.tags_manifest(out)}
    stream = tag_readers.scan_tags(out)
    assert stream.manifest is not None and stream.manifest["settings"]["job"] == "tag"
