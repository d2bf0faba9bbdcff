"""Usage and output errors: one line, exit 2, before any model loads; signals and pipes end cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_matpac, write_audio


@pytest.fixture()
def clips(tmp_path) -> Path:
    write_audio(tmp_path / "clips" / "a.wav", 1.0)
    (tmp_path / "a.wav").write_bytes(b"a file, not a folder")
    return tmp_path


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--workers", "-2"], "--workers -2"),
        (["--threads", "-1"], "--threads -1"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--layer", "twelve"], "--layer twelve"),
        (["--out", "a.wav/t.npy"], "a.wav is not a folder"),
        (["--out", "/proc/x.npy"], "/proc/x.npy"),
        (["--out", "emb.h5"], ".npy (e.g. emb.npy, rows indexed in emb.csv) or .parquet"),
        (["--model", "matpac-pluss"], "matpac-plus"),
    ],
)
def test_embed_argument_errors_are_one_line_exit_2_before_the_model_loads(hub, clips, extra, says):
    args = ["embed", "clips", "--out", "emb.npy", *extra]
    proc = run_matpac(args, cwd=clips)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("matpac: error: ") and says in err, err
    assert proc.stdout == b""
    assert hub.requests == [], "a model download started before the arguments were checked"


@pytest.mark.parametrize("command", [["embed", "clips", "--out", "emb.npy"], ["tag", "clips"]])
def test_a_misspelt_linear_setting_is_refused_before_any_download(hub, clips, command):
    proc = run_matpac(command, cwd=clips, env={"MATPAC_CPU_LINEAR": "mkl"})
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.strip() == "matpac: error: MATPAC_CPU_LINEAR=mkl: expected plain, onednn or auto", err
    assert hub.requests == [], "a model download started before the setting was checked"


def test_workers_and_threads_zero_mean_the_default(tmp_path):
    import torch
    from reference import make_checkpoint

    torch.save(make_checkpoint(width=128, depth=2, n_t=608, seed=3), tmp_path / "tiny.pt")
    write_audio(tmp_path / "a.wav", 1.0)
    proc = run_matpac(
        ["embed", "a.wav", "--out", "e.npy", "--model", "tiny.pt", "--workers", "0", "--threads", "0", "-q"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


def test_version_and_completion_are_offered():
    from matpac_cli import __version__

    proc = run_matpac(["--version"])
    assert proc.returncode == 0 and proc.stdout.decode().strip() == f"matpac {__version__}"
    help_text = run_matpac(["--help"]).stdout.decode()
    assert "--install-completion" in help_text and "--show-completion" in help_text


def test_a_closed_stdout_pipe_ends_tag_quietly_with_exit_0(tmp_path):
    """`matpac tag ... | head -1`: no message, no traceback, exit 0 (as ripgrep does)."""
    import torch
    from reference import make_checkpoint

    torch.save(make_checkpoint(width=128, depth=2, n_t=608, seed=3), tmp_path / "tiny.pt")
    g = torch.Generator().manual_seed(0)
    torch.save(
        {"weight": torch.randn(20, 640, generator=g), "bias": torch.randn(20, generator=g)}, tmp_path / "openmic.pth"
    )
    for i in range(6):
        write_audio(tmp_path / "clips" / f"c{i}.wav", 1.0, seed=i)
    script = (
        f"set -o pipefail; {sys.executable} -m matpac_cli tag clips --model tiny.pt --head openmic.pth "
        "--top-k 0 --workers 1 --batch-size 1 | head -1"
    )
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=300)
    assert proc.stdout.decode().startswith("path,head,label,score,rank")
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr and b"Broken pipe" not in proc.stderr, proc.stderr


def test_help_names_the_ray_extra_whole():
    """Rich reads `[ray]` as a style tag unless escaped: the install command must survive."""
    proc = run_matpac(["embed", "--help"], env={"COLUMNS": "300"})
    assert "pip install '.[ray]' in matpac's source folder" in proc.stdout.decode()
