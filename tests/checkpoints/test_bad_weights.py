"""Bad weight files: one clean line and exit 2, never a traceback, a NaN score or an output file.

Every case goes through the real command in a subprocess, as a user would meet it: a checkpoint
with NaN or infinite weights, empty, truncated or random files, pickles that hold Python objects
(one of them would run `os.system` if it were ever unpickled unsafely), a tensor instead of a
state dict, wrong shapes, and folders named like weight files. Probe files get the same checks.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from conftest import run_matpac, write_audio
from reference import make_checkpoint

QKV = "student_encoder.blocks.0.attn.qkv.weight"


class NotATensor:
    """A custom class a checkpoint might carry (a config object, say): weights_only refuses it."""

    def __init__(self) -> None:
        self.lr = 0.1


class RunsACommand:
    """Unpickled unsafely, this would create the marker file; matpac must never let it run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _poison(sd: dict, key: str, value: float) -> dict:
    out = dict(sd)
    out[key] = sd[key].clone()
    out[key].view(-1)[7] = value
    return out


def _cut(src: Path, dest: Path) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _noise(dest: Path, n: int = 5000, seed: int = 0) -> Path:
    rng = random.Random(seed)
    dest.write_bytes(bytes(rng.randrange(256) for _ in range(n)))
    return dest


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with an audio file, a good tiny checkpoint and every bad weight file."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("bad_weights")
    write_audio(d / "a.wav", 2.0)
    sd = make_checkpoint(width=128, depth=2, n_t=608, seed=1)
    torch.save(sd, d / "good.pt")
    save_file(sd, str(d / "good.safetensors"))
    torch.save(_poison(sd, QKV, float("nan")), d / "nan.pt")
    save_file(_poison(sd, "pos_embed", float("inf")), str(d / "inf.safetensors"))
    torch.save({"model": _poison(sd, "cls_token", float("-inf"))}, d / "wrapped_inf.pt")
    sd_as = make_checkpoint(width=128, depth=2, n_t=992, seed=2, with_audioset_head=True, n_classes=527)
    torch.save(_poison(sd_as, "head.weight", float("nan")), d / "nan_head.pt")
    torch.save({k: v.half() for k, v in _poison(sd, QKV, float("nan")).items()}, d / "nan_fp16.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "empty.safetensors").write_bytes(b"")
    _cut(d / "good.pt", d / "truncated.pt")
    _cut(d / "good.safetensors", d / "truncated.safetensors")
    _noise(d / "random.pt")
    _noise(d / "random.safetensors", seed=1)
    torch.save(torch.zeros(3, 4), d / "tensor.pt")
    torch.save({**sd, "config": NotATensor()}, d / "object.pt")
    torch.save({**sd, "hook": RunsACommand(d / "PWNED")}, d / "os_system.pt")
    with open(d / "os_system_pickle.pt", "wb") as fh:  # a plain (not torch.save) pickle, protocol 4
        pickle.dump({"hook": RunsACommand(d / "PWNED")}, fh, protocol=4)
    torch.save({**sd, "pos_embed": sd["pos_embed"][:, :10]}, d / "geometry.pt")
    torch.save({**sd, QKV: sd[QKV][:, :64]}, d / "misshapen.pt")
    (d / "dir.pt").mkdir()
    (d / "dir.safetensors").mkdir()
    return d


CASES = [  # file, words the one line must hold
    ("nan.pt", [f"tensor {QKV} has NaN values", "refusing"]),
    ("inf.safetensors", ["tensor pos_embed has infinite values"]),
    ("wrapped_inf.pt", ["cls_token has infinite values"]),
    ("nan_head.pt", ["tensor head.weight has NaN values"]),
    ("nan_fp16.pt", [QKV, "NaN"]),
    ("empty.pt", ["empty file (0 bytes)"]),
    ("empty.safetensors", ["empty file (0 bytes)"]),
    ("truncated.pt", ["truncated or damaged"]),
    ("truncated.safetensors", ["not a valid .safetensors file, or a truncated one"]),
    ("random.pt", ["not a PyTorch checkpoint"]),
    ("random.safetensors", ["not a valid .safetensors file"]),
    ("tensor.pt", ["holds a Tensor, not a state dict"]),
    (
        "object.pt",
        ["Python objects beyond plain tensors", "NotATensor", "for safety", "plain state dict", ".safetensors"],
    ),
    ("os_system.pt", ["Python objects beyond plain tensors", "system", "for safety", ".safetensors"]),
    ("os_system_pickle.pt", ["not a PyTorch checkpoint"]),
    ("geometry.pt", ["geometry not understood"]),
    ("misshapen.pt", ["misshapen keys", QKV]),
    ("dir.pt", ["is a folder, not a checkpoint file"]),
    ("dir.safetensors", ["is a folder, not a checkpoint file"]),
]


def assert_one_clean_line(proc, name: str, words: list[str]) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("matpac: error: "), err
    assert name in lines[0], err
    for word in words:
        assert word in lines[0], err
    assert len(lines[0]) < 400, err
    return lines[0]


@pytest.mark.parametrize("name, words", CASES, ids=[c[0] for c in CASES])
def test_bad_checkpoint_is_one_line_exit_2_and_writes_nothing(work, tmp_path, name, words):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_matpac(
        ["embed", str(work / "a.wav"), "--out", str(out / "e.npy"), "--model", name, "--device", "cpu"],
        cwd=work,
        timeout=120,
    )
    assert_one_clean_line(proc, name, words)
    assert proc.stdout == b""
    assert sorted(os.listdir(out)) == [], "an output was written for a refused checkpoint"
    assert not (work / "PWNED").exists(), "a pickled command ran"


def test_good_checkpoints_still_load(work, tmp_path):
    """The checks refuse only bad files: the same weights, clean, embed in both formats."""
    for name in ("good.pt", "good.safetensors"):
        proc = run_matpac(
            ["embed", "a.wav", "--out", str(tmp_path / f"{name}.npy"), "--model", name, "--device", "cpu", "-q"],
            cwd=work,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        assert (tmp_path / f"{name}.npy").is_file()


# ------------------------------------------------------------------------------ probe files


@pytest.fixture(scope="module")
def probes(work) -> Path:
    from matpac_cli.config import EncoderDims

    emb = EncoderDims.from_state_dict(torch.load(work / "good.pt", weights_only=True)).embed_dim
    d = work / "probes"
    d.mkdir()
    g = torch.Generator().manual_seed(5)
    good = {"probe.weight": torch.randn(20, emb, generator=g) * 0.05, "probe.bias": torch.zeros(20)}
    (d / "nan").mkdir()
    torch.save(_poison(good, "probe.weight", float("nan")), d / "nan" / "openmic.pth")
    (d / "inf_stats").mkdir()
    torch.save(
        {**good, "mean": torch.zeros(emb), "scale": torch.full((emb,), float("inf"))}, d / "inf_stats" / "openmic.pth"
    )
    (d / "empty").mkdir()
    (d / "empty" / "openmic.pth").write_bytes(b"")
    (d / "object").mkdir()
    torch.save({**good, "config": NotATensor()}, d / "object" / "openmic.pth")
    (d / "truncated").mkdir()
    torch.save(good, d / "good.pth")
    _cut(d / "good.pth", d / "truncated" / "openmic.pth")
    (d / "folder" / "openmic.pth").mkdir(parents=True)
    return d


PROBE_CASES = [
    ("nan", ["probe file", "tensor probe.weight has NaN values"]),
    ("inf_stats", ["probe file", "tensor scale has infinite values"]),
    ("empty", ["cannot read probe file", "empty file (0 bytes)"]),
    ("object", ["Python objects beyond plain tensors", "NotATensor", "for safety"]),
    ("truncated", ["truncated or damaged"]),
    ("folder", ["is a folder, not a probe file"]),
]


@pytest.mark.parametrize("case, words", PROBE_CASES)
def test_bad_probe_file_is_one_line_exit_2_and_writes_nothing(work, probes, tmp_path, case, words):
    out = tmp_path / "tags.csv"
    proc = run_matpac(
        [
            "tag",
            str(work / "a.wav"),
            "--model",
            str(work / "good.pt"),
            "--head",
            "./openmic.pth",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        cwd=probes / case,
        timeout=120,
    )
    assert_one_clean_line(proc, "openmic.pth", words)
    # (hf_home may hold the model's remembered sha256: a cache, not an output)
    assert [p for p in tmp_path.iterdir() if p.name != "hf_home"] == [], "an output was written for a refused probe"


# ------------------------------------------------------------------------------ the library


def test_load_checkpoint_names_the_first_bad_tensor(work):
    from matpac_cli.checkpoints.resolve import load_checkpoint
    from matpac_cli.errors import ModelError

    with pytest.raises(ModelError, match=rf"^model .*nan\.pt: tensor {QKV} has NaN values: refusing it$"):
        load_checkpoint(work / "nan.pt")
    with pytest.raises(ModelError, match=r"empty file \(0 bytes\)"):
        load_checkpoint(work / "empty.pt")
    with pytest.raises(ModelError, match="is a folder"):
        load_checkpoint(work / "dir.pt")


def test_probe_folder_is_named_a_folder(probes, monkeypatch):
    from matpac_cli.errors import UsageError
    from matpac_cli.inference.heads import resolve_head

    monkeypatch.chdir(probes / "folder")
    with pytest.raises(UsageError, match=r"^head \./openmic\.pth is a folder, not a probe file$"):
        resolve_head("./openmic.pth", None, 640)


def test_finite_check_is_one_reduction_per_clean_tensor(work, monkeypatch):
    """The element-wise isfinite (about ten times the cost of a sum) runs only on a tensor whose
    sum is not finite, so a 350 MB checkpoint loads a fraction of a second slower, not seconds."""
    from matpac_cli.checkpoints.resolve import check_finite

    sd = torch.load(work / "good.pt", weights_only=True)
    real = torch.isfinite
    big = []

    def spy(t):
        if t.numel() > 1:
            big.append(t.shape)
        return real(t)

    monkeypatch.setattr(torch, "isfinite", spy)
    check_finite(sd, "model good.pt")
    assert big == []
    huge = {"w": torch.full((4, 4), 3e38)}  # finite values whose float32 sum overflows: not refused
    check_finite(huge, "model huge.pt")
    assert big == [(4, 4)]
