"""The hostile-input corpus (issue 20): every reader of matpac, fed crafted files through the real
command, answers in one line and never with a traceback.

Each case builds one hostile input in its own folder (from the valid outputs of one real
`embed` run, a hand-written tag file, a trained head and a labels CSV) and runs the command that
reads it. An error case must end with exactly one `matpac: error:` line naming the file, no
traceback, and exit 2 (1 where it is one input file's error: the run goes on with the others).
A case marked 0 is input matpac accepts (a byte-order mark, a Fortran-ordered matrix): it must
simply work. `test_the_corpus_counts` prints the tally (cases, one-line errors, tracebacks).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_matpac, write_audio

TALLY = {"cases": 0, "one-line errors": 0, "accepted": 0, "tracebacks": 0}
HUGE_FIELD = "x" * 140_000  # over the csv module's 131,072-character field limit
DEEP_JSON = "[" * 100_000 + "]" * 100_000  # nesting past json's recursion limit


@pytest.fixture(scope="module")
def base(tmp_path_factory, ckpts) -> dict:
    """base/: clips a.wav b.wav c.wav, their real `embed` output e.npy/e.csv/e.manifest.json,
    a tags file, a trained head on that encoder, and a labels CSV."""
    d = tmp_path_factory.mktemp("corpus_base")
    for i, name in enumerate("abc"):
        write_audio(d / "clips" / f"{name}.wav", 0.5, seed=i)
    model = str(ckpts["tiny608"])
    proc = run_matpac(["embed", "clips", "--out", "e.npy", "--model", model, "-q", "--library", "lib"], cwd=d)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((d / "e.manifest.json").read_text())
    with open(d / "tags.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "head", "label", "score", "rank", "tag_id", "start_s", "end_s"])
        for name in "abc":
            w.writerow([f"clips/{name}.wav", "genre", "rock", "0.9", 1, "rock", "", ""])
            w.writerow([f"clips/{name}.wav", "genre", "rock", "0.8", 1, "rock", "0.0", "6.095"])
    (d / "labels.csv").write_text("path,label\nclips/a.wav,x\nclips/b.wav,x\nclips/c.wav,y\n")
    dim = np.load(d / "e.npy").shape[1]
    return {"dir": d, "model": model, "manifest": manifest, "dim": dim}


def _head(path: Path, model: dict, model_path: str, dim: int, **meta) -> dict:
    from safetensors.numpy import save

    from matpac_cli.checkpoints.trained_head import TrainedHead, to_bytes

    head = TrainedHead(
        np.ones((2, dim), np.float32),
        np.zeros(2, np.float32),
        np.zeros(dim, np.float32),
        np.ones(dim, np.float32),
        ["x", "y"],
        "single",
        {"name": model_path, "source": "file", "sha256": model["sha256"], "path": model_path},
        layer=model["geometry"]["depth"],
    )
    path.write_bytes(to_bytes(head))
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        header = dict(fh.metadata())
    if meta:
        header.update(meta)
        path.write_bytes(save(tensors, metadata=header))
    return header


# ---------------------------------------------------------------- building hostile copies


def _copy_index(d: Path, base: dict, name: str = "e") -> Path:
    for suffix in (".npy", ".csv", ".manifest.json"):
        shutil.copy(base["dir"] / f"e{suffix}", d / f"{name}{suffix}")
    return d / f"{name}.npy"


def _npy(d, base, array=None, raw: bytes | None = None, fortran=False) -> Path:
    npy = _copy_index(d, base)
    if raw is not None:
        npy.write_bytes(raw)
    elif array is not None:
        np.save(npy, np.asfortranarray(array) if fortran else array, allow_pickle=True)
    return npy


def _index_csv(d, base, text: str | None = None, edit: Callable[[str], str] | None = None) -> Path:
    npy = _copy_index(d, base)
    csv_path = d / "e.csv"
    csv_path.write_text(text if text is not None else edit(csv_path.read_text()))
    return npy


def _manifest(d, base, change: Callable[[dict], object] | None = None, text: str | None = None) -> Path:
    npy = _copy_index(d, base)
    data = json.loads(json.dumps(base["manifest"]))
    (d / "e.manifest.json").write_text(text if text is not None else json.dumps(change(data) or data))
    return npy


def _set(path: str, value):
    def change(data: dict):
        keys = path.split(".")
        node = data
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[keys[-1]] = value

    return change


def _parquet(d, base, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = np.load(base["dir"] / "e.npy")
    data = {
        "path": ["clips/a.wav", "clips/b.wav", "clips/c.wav"],
        "duration_s": [0.5] * 3,
        "sample_rate": [16000] * 3,
        "channels": [1] * 3,
        "embedding": [list(map(float, r)) for r in X],
    }
    data.update(columns)
    table = pa.table(
        {
            k: (
                pa.array(v, pa.list_(pa.float32()))
                if k == "embedding" and v and isinstance(v[0], list)
                else pa.array(v)
            )
            for k, v in data.items()
        }
    )
    pq.write_table(table, d / "e.parquet")
    return d / "e.parquet"


def _tags(d, base, rows: list[list] | None = None, text: str | None = None, name="t.csv") -> Path:
    path = d / name
    if text is not None:
        path.write_text(text)
        return path
    header = ["path", "head", "label", "score", "rank", "tag_id", "start_s", "end_s"]
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([header, *rows])
    return path


def _row(score="0.9", start="", end="", rank="1", path="clips/a.wav"):
    return [path, "genre", "rock", score, rank, "rock", start, end]


def _tags_manifest(d, base, change) -> Path:
    tags = _tags(d, base, [_row()])
    data = {"matpac_version": "0", "models": [], "heads": [], "settings": {}, "output": {}}
    change(data)
    (d / "t.csv.manifest.json").write_text(json.dumps(data))
    return tags


def _head_with(d, base, **meta) -> Path:
    _head(d / "h.safetensors", base["manifest"]["models"][0], base["model"], base["dim"], **meta)
    return d / "h.safetensors"


# ---------------------------------------------------------------- the commands that read them


def search(npy) -> list[str]:
    return ["search", "clips/a.wav", "--index", str(npy), "-k", "2"]


def dups(npy) -> list[str]:
    return ["search", "--index", str(npy), "--duplicates"]


def report(tags, emb=None) -> list[str]:
    return ["report", str(tags), "--out", "r.html", "-q"] + (["--embeddings", str(emb)] if emb else [])


def train_emb(npy, labels="labels.csv") -> list[str]:
    return ["train", labels, "--embeddings", str(npy), "--out", "h2.safetensors", "-q"]


def tag_head(head, base) -> list[str]:
    return ["tag", "clips", "--model", base["model"], "--head", str(head), "--out", "t2.csv", "-q"]


def verify_with_records(d, text: str) -> list[str]:
    cache = d / "hf" / "matpac"
    (cache / "releases" / "Probes_weights").mkdir(parents=True)
    (cache / "releases" / "Probes_weights" / "Weights_probes_matpac.zip").write_bytes(b"PK not really")
    (cache / "sha256.json").write_text(text)
    return ["models", "verify"]


def _long_name_input(d: Path) -> list[str]:
    """`clips/d/../d/../...` past 4,096 characters: that one input cannot even be opened."""
    (d / "clips" / "d").mkdir()
    long = "clips/" + "d/../" * 830 + "c.wav"
    assert len(long) > 4096
    return ["embed", "clips/a.wav", long, "clips/b.wav", "--out", "o.npy", "--frames", "fr", "--model", "{model}", "-q"]


def _nul_in_list(d: Path, base: dict) -> list[str]:
    """A newline-separated stdin list whose middle name holds a NUL byte: that input's error (an
    existing output replaced with --force: the run's inputs are compared with it first)."""
    (d / "stdin").write_bytes(b"clips/a.wav\na\0b.wav\nclips/b.wav\n")
    (d / "o.csv").write_text("old\n")
    return ["tag", "-", "--model", "{model}", "--head", str(_head_with(d, base)), "--out", "o.csv", "--force", "-q"]


# (reader, kind, build(d, base) -> args, expected exit status)
CASES: list[tuple[str, str, Callable, int]] = [
    # search --index: the matrix
    ("search", "npy N x 0 x D", lambda d, b: search(_npy(d, b, np.zeros((3, 0, 8), np.float32))), 2),
    ("search", "npy N x 0", lambda d, b: search(_npy(d, b, np.zeros((3, 0), np.float32))), 2),
    ("search", "npy int32", lambda d, b: search(_npy(d, b, np.ones((3, 8), np.int32))), 2),
    ("search", "npy complex64", lambda d, b: search(_npy(d, b, np.ones((3, 8), np.complex64))), 2),
    ("search", "npy pickled object array", lambda d, b: search(_npy(d, b, np.array([{}, [], 1], dtype=object))), 2),
    ("search", "npy big-endian float32", lambda d, b: search(_npy(d, b, np.ones((3, 8), ">f4"))), 2),
    ("search", "npy empty file", lambda d, b: search(_npy(d, b, raw=b"")), 2),
    ("search", "npy truncated", lambda d, b: search(_npy(d, b, raw=(b["dir"] / "e.npy").read_bytes()[:300])), 2),
    ("search", "npy header only", lambda d, b: search(_npy(d, b, raw=(b["dir"] / "e.npy").read_bytes()[:128])), 2),
    ("search", "npy not npy", lambda d, b: search(_npy(d, b, raw=b"\x93NUMPY\x01\x00\xff\xff{'descr'")), 2),
    (
        "search",
        "npy Fortran order (accepted)",
        lambda d, b: search(_npy(d, b, np.load(b["dir"] / "e.npy"), fortran=True)),
        0,
    ),
    # search --index: the row index
    (
        "search",
        "csv fewer rows than npy",
        lambda d, b: search(_index_csv(d, b, edit=lambda t: "\n".join(t.splitlines()[:-1]) + "\n")),
        2,
    ),
    (
        "search",
        "csv field over 131,072 chars",
        lambda d, b: search(_index_csv(d, b, edit=lambda t: t.replace("clips/c.wav", HUGE_FIELD))),
        2,
    ),
    (
        "search",
        "csv duplicate header column",
        lambda d, b: search(_index_csv(d, b, edit=lambda t: t.replace("row,path,", "row,path,path,", 1))),
        2,
    ),
    (
        "search",
        "csv NUL byte",
        lambda d, b: search(_index_csv(d, b, edit=lambda t: t.replace("clips/c", "cl\0ps/c"))),
        2,
    ),
    ("search", "csv empty", lambda d, b: search(_index_csv(d, b, text="")), 2),
    (
        "search",
        "csv row not a number",
        lambda d, b: search(_index_csv(d, b, edit=lambda t: t.replace("\n2,", "\nzz,"))),
        2,
    ),
    ("search", "csv byte-order mark (accepted)", lambda d, b: search(_index_csv(d, b, edit=lambda t: "\ufeff" + t)), 0),
    # search --index: the manifest
    ("search", "manifest models a string", lambda d, b: search(_manifest(d, b, _set("models", "tiny"))), 2),
    ("search", "manifest models[0] a number", lambda d, b: search(_manifest(d, b, _set("models", [7]))), 2),
    ("search", "manifest settings a list", lambda d, b: search(_manifest(d, b, _set("settings", [1, 2]))), 2),
    ("search", "manifest layers a number", lambda d, b: search(_manifest(d, b, _set("settings.layers", 12))), 2),
    (
        "search",
        "manifest geometry strings",
        lambda d, b: search(_manifest(d, b, _set("models.0.geometry", {"depth": "x"}))),
        2,
    ),
    ("search", "manifest a list", lambda d, b: search(_manifest(d, b, lambda m: [m])), 2),
    ("search", "manifest nested too deep", lambda d, b: search(_manifest(d, b, text=DEEP_JSON)), 2),
    ("search", "manifest truncated", lambda d, b: search(_manifest(d, b, text='{"matpac_version": "1", "mod')), 2),
    ("duplicates", "npy N x 0 x D", lambda d, b: dups(_npy(d, b, np.zeros((3, 0, 8), np.float32))), 2),
    ("duplicates", "manifest layers strings", lambda d, b: dups(_manifest(d, b, _set("settings.layers", ["a"]))), 2),
    (
        "duplicates",
        "csv field over 131,072 chars",
        lambda d, b: dups(_index_csv(d, b, edit=lambda t: t.replace("clips/a.wav", HUGE_FIELD))),
        2,
    ),
    # search --index X.parquet
    ("search", "parquet duration_s strings", lambda d, b: search(_parquet(d, b, duration_s=["long"] * 3)), 2),
    ("search", "parquet sample_rate strings", lambda d, b: search(_parquet(d, b, sample_rate=["16k"] * 3)), 2),
    ("search", "parquet channels floats", lambda d, b: search(_parquet(d, b, channels=[1.5] * 3)), 2),
    ("search", "parquet embedding strings", lambda d, b: search(_parquet(d, b, embedding=["a", "b", "c"])), 2),
    ("search", "parquet embedding of length 0", lambda d, b: search(_parquet(d, b, embedding=[[], [], []])), 2),
    ("search", "parquet path numbers", lambda d, b: search(_parquet(d, b, path=[1, 2, 3])), 2),
    ("search", "parquet truncated", lambda d, b: search(_text(d / "t.parquet", _parquet(d, b).read_bytes()[:200])), 2),
    # report: the tags file
    ("report", "score NaN", lambda d, b: report(_tags(d, b, [_row("nan")])), 2),
    ("report", "score inf", lambda d, b: report(_tags(d, b, [_row("inf")])), 2),
    (
        "report",
        "score -Infinity in JSON Lines",
        lambda d, b: report(
            _tags(
                d,
                b,
                name="t.jsonl",
                text=json.dumps(
                    dict(
                        zip(
                            ["path", "head", "label", "score", "rank", "tag_id"], ["a", "g", "l", float("-inf"), 1, "l"]
                        )
                    )
                )
                + "\n",
            )
        ),
        2,
    ),
    (
        "report",
        "score a list in JSON Lines",
        lambda d, b: report(_tags(d, b, [["a", "g", "l", [1], 1, "l", None, None]], name="t.jsonl")),
        2,
    ),
    ("report", "start_s inf", lambda d, b: report(_tags(d, b, [_row(), _row(start="inf", end="1")])), 2),
    ("report", "end_s 1e309", lambda d, b: report(_tags(d, b, [_row(), _row(start="0", end="1e309")])), 2),
    ("report", "rank 1.5", lambda d, b: report(_tags(d, b, [_row(rank="1.5")])), 2),
    ("report", "csv field over 131,072 chars", lambda d, b: report(_tags(d, b, [_row(path=HUGE_FIELD)])), 2),
    (
        "report",
        "csv duplicate header column",
        lambda d, b: report(_tags(d, b, text="path,head,label,score,rank,tag_id,score\n")),
        2,
    ),
    (
        "report",
        "csv NUL byte",
        lambda d, b: report(_tags(d, b, text="path,head,label,score,rank,tag_id\na\0,g,l,1,1,l\n")),
        2,
    ),
    ("report", "csv empty", lambda d, b: report(_tags(d, b, text="")), 2),
    (
        "report",
        "csv truncated row",
        lambda d, b: report(_tags(d, b, text="path,head,label,score,rank,tag_id\na.wav,genre,ro")),
        2,
    ),
    (
        "report",
        "JSON Lines nested too deep",
        lambda d, b: report(_tags(d, b, name="t.jsonl", text=DEEP_JSON + "\n")),
        2,
    ),
    (
        "report",
        "csv byte-order mark (accepted)",
        lambda d, b: report(_tags(d, b, text="\ufeff" + (b["dir"] / "tags.csv").read_text())),
        0,
    ),
    ("report", "parquet score strings", lambda d, b: report(_tag_parquet(d, score=["high"])), 2),
    ("report", "parquet score NaN", lambda d, b: report(_tag_parquet(d, score=[float("nan")])), 2),
    ("report", "manifest heads a string", lambda d, b: report(_tags_manifest(d, b, _set("heads", "genre"))), 2),
    ("report", "manifest heads[0] a string", lambda d, b: report(_tags_manifest(d, b, _set("heads", ["genre"]))), 2),
    (
        "report",
        "manifest threshold a string",
        lambda d, b: report(_tags_manifest(d, b, _set("output", {"threshold": "high"}))),
        2,
    ),
    (
        "report",
        "manifest command a string",
        lambda d, b: report(_tags_manifest(d, b, _set("command", "matpac tag"))),
        2,
    ),
    (
        "report",
        "manifest models[0].sha256 a number",
        lambda d, b: report(_tags_manifest(d, b, _set("models", [{"sha256": 5}]))),
        2,
    ),
    (
        "report",
        "--embeddings npy N x 0 x D",
        lambda d, b: report(b["dir"] / "tags.csv", _npy(d, b, np.zeros((3, 0, 8), np.float32))),
        2,
    ),
    (
        "report",
        "--embeddings manifest models[0] a list",
        lambda d, b: report(b["dir"] / "tags.csv", _manifest(d, b, _set("models", [[1]]))),
        2,
    ),
    # train: --embeddings and the labels CSV
    (
        "train",
        "--embeddings manifest models[0] a number",
        lambda d, b: train_emb(_manifest(d, b, _set("models", [1]))),
        2,
    ),
    (
        "train",
        "--embeddings manifest depth a string",
        lambda d, b: train_emb(_manifest(d, b, _set("models.0.geometry.depth", "12"))),
        2,
    ),
    (
        "train",
        "--embeddings manifest layers strings",
        lambda d, b: train_emb(_manifest(d, b, _set("settings.layers", ["last"]))),
        2,
    ),
    ("train", "--embeddings npy N x 0 x D", lambda d, b: train_emb(_npy(d, b, np.zeros((3, 0, 8), np.float32))), 2),
    (
        "train",
        "labels csv field over 131,072 chars",
        lambda d, b: train_emb(_copy_index(d, b), _text(d / "l.csv", f"path,label\nclips/a.wav,{HUGE_FIELD}\n")),
        2,
    ),
    (
        "train",
        "labels csv NUL byte",
        lambda d, b: train_emb(_copy_index(d, b), _text(d / "l.csv", "path,label\nclips/a\0.wav,x\n")),
        2,
    ),
    ("train", "labels csv empty", lambda d, b: train_emb(_copy_index(d, b), _text(d / "l.csv", "")), 2),
    (
        "train",
        "labels csv duplicate header column",
        lambda d, b: train_emb(_copy_index(d, b), _text(d / "l.csv", "path,label,label\nclips/a.wav,x,y\n")),
        2,
    ),
    # tag --head FILE: a trained head's metadata
    ("tag --head", "classes a number", lambda d, b: tag_head(_head_with(d, b, classes="5"), b), 2),
    ("tag --head", "classes numbers", lambda d, b: tag_head(_head_with(d, b, classes="[1, 2]"), b), 2),
    ("tag --head", "encoder a list", lambda d, b: tag_head(_head_with(d, b, encoder="[]"), b), 2),
    (
        "tag --head",
        "encoder name a number",
        lambda d, b: tag_head(_head_with(d, b, encoder='{"name": 5, "source": "file"}'), b),
        2,
    ),
    ("tag --head", "metrics a list", lambda d, b: tag_head(_head_with(d, b, metrics="[]"), b), 2),
    ("tag --head", "classes nested too deep", lambda d, b: tag_head(_head_with(d, b, classes=DEEP_JSON), b), 2),
    ("tag --head", "file truncated", lambda d, b: tag_head(_truncated_head(d, b), b), 2),
    ("tag --head", "probe .pth complex weight", lambda d, b: tag_head(_probe(d, b, torch_dtype="complex64"), b), 2),
    ("tag --head", "probe .pth not a pickle", lambda d, b: tag_head(_text(d / "p.pth", b"\x80\x02garbage"), b), 2),
    ("tag --head", "probe .pth a pickle that runs code", lambda d, b: tag_head(_evil_pickle(d), b), 2),
    (
        "tag --labels",
        "labels file not UTF-8",
        lambda d, b: tag_head(_probe(d, b), b) + ["--labels", _text(d / "l.txt", b"\xff\xfe\x00a\n")],
        2,
    ),
    # embed: resuming from a damaged library
    ("embed --library", "a table's data overwritten", lambda d, b: _library(d, b, "clips.lance/data", b"garbage"), 2),
    ("embed --library", "a table's data cut short", lambda d, b: _library(d, b, "paths.lance/data", None), 2),
    ("embed --library", "a table's versions garbage", lambda d, b: _library(d, b, "clips.lance/_versions", b"x"), 2),
    # models verify: the weights' hash records
    ("models verify", "sha256.json a list", lambda d, b: verify_with_records(d, "[1, 2]"), 2),
    ("models verify", "sha256.json a number for a hash", lambda d, b: verify_with_records(d, '{"probes|x": 5}'), 2),
    ("models verify", "sha256.json truncated", lambda d, b: verify_with_records(d, '{"probes|x": "ab'), 2),
    # embed --frames: one input's path over 4,096 characters is that input's error
    ("embed --frames", "input path over 4,096 chars", lambda d, b: _long_name_input(d), 1),
    # tag -: the list of paths on stdin
    ("tag -", "stdin name with a NUL byte", _nul_in_list, 1),
]
# what names the failed input on its line, for the cases that are one input's error (exit 1)
ONE_INPUT = {"input path over 4,096 chars": "d/../", "stdin name with a NUL byte": "a\\x00b.wav"}


def _text(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _probe(d: Path, base: dict, torch_dtype: str = "float32") -> str:
    import torch

    dtype = getattr(torch, torch_dtype)
    torch.save(
        {"probe.weight": torch.ones(2, base["dim"], dtype=dtype), "probe.bias": torch.zeros(2, dtype=dtype)},
        d / "p.pth",
    )
    return str(d / "p.pth")


def _evil_pickle(d: Path) -> str:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'ran'}",))

    (d / "p.pth").write_bytes(pickle.dumps({"probe.weight": Evil()}))
    return str(d / "p.pth")


def _library(d: Path, base: dict, folder: str, content: bytes | None) -> list[str]:
    """base's library with every file of one of its folders overwritten with `content` (None:
    cut to half)."""
    shutil.copytree(base["dir"] / "lib", d / "lib")
    for path in (d / "lib" / folder).iterdir():
        path.write_bytes(content if content is not None else path.read_bytes()[: path.stat().st_size // 2])
    return ["embed", "clips", "--out", "e.npy", "--model", base["model"], "-q", "--library", "lib"]


def _tag_parquet(d: Path, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {"path": ["a"], "head": ["g"], "label": ["l"], "score": [0.5], "rank": [1], "tag_id": ["l"]}
    data.update(columns)
    pq.write_table(pa.table(data), d / "t.parquet")
    return d / "t.parquet"


def _truncated_head(d: Path, base: dict) -> Path:
    path = _head_with(d, base)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + n + 16])  # the header whole, the tensors cut short
    return path


@pytest.mark.parametrize("reader,kind,build,code", CASES, ids=[f"{r}: {k}" for r, k, _, _ in CASES])
def test_hostile_input_is_one_line(reader, kind, build, code, base, tmp_path):
    for entry in ("clips", "tags.csv", "labels.csv"):
        src = base["dir"] / entry
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / entry)
    args = [a.replace("{model}", base["model"]) for a in build(tmp_path, base)]
    env = {"HF_HOME": str(tmp_path / "hf")}
    stdin = tmp_path / "stdin"
    proc = run_matpac(args, cwd=tmp_path, env=env, input=stdin.read_bytes() if stdin.exists() else None)
    err = proc.stderr.decode(errors="replace")
    TALLY["cases"] += 1
    TALLY["tracebacks"] += "Traceback" in err
    assert not (tmp_path / "ran").exists(), "a pickle ran code"
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("matpac: error:")]
    if code == 0:
        assert proc.returncode == 0 and not errors, err
        TALLY["accepted"] += 1
        return
    assert proc.returncode == code, err
    if code == 2:
        assert len(errors) == 1, err
        assert len(errors[0]) < 1000, errors[0]  # one line for a person, not a dump of the input
    else:  # one input's error: named on its own line (as shown on a terminal), the other inputs done
        assert sum(1 for ln in err.splitlines() if ln.startswith("matpac:") and ONE_INPUT[kind] in ln) == 1, err
        with open(tmp_path / "o.csv", newline="", encoding="utf-8") as fh:
            assert {row["path"] for row in csv.DictReader(fh)} == {"clips/a.wav", "clips/b.wav"}
    TALLY["one-line errors"] += 1


def test_the_corpus_counts():
    """The tally of the cases above (run with them: `pytest tests/cli/test_corpus.py -s`)."""
    if TALLY["cases"] < len(CASES):
        pytest.skip("run with the whole corpus to count it")
    kinds = len({k for _, k, _, _ in CASES})
    print(
        f"\nhostile corpus: {TALLY['cases']} cases ({kinds} kinds, {len({r for r, *_ in CASES})} readers), "
        f"{TALLY['one-line errors']} one-line errors, {TALLY['accepted']} accepted, "
        f"{TALLY['tracebacks']} tracebacks"
    )
    assert TALLY["tracebacks"] == 0
    assert TALLY["one-line errors"] + TALLY["accepted"] == TALLY["cases"]
