"""Shared fixtures: tiny checkpoints in the release layout, generated audio, a loopback server.

Nothing here reaches the network: weights come from `fakeserver.FakeServer` through the real
download code, audio is synthesised with numpy and written with soundfile.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))

from fakeserver import FakeServer, patch_hub  # noqa: E402
from reference import make_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own HF cache and no real endpoint, so nothing leaks or downloads."""
    import huggingface_hub.constants as hf

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # closed port: any stray request fails fast
    monkeypatch.setenv("MATPAC_RELEASE_URL", "http://127.0.0.1:9/")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_DISABLE_TELEMETRY", True)
    yield


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints (width 128, depth 2) in the release layout: 608 frames, and 992 + AudioSet head."""
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    sd = make_checkpoint(width=128, depth=2, n_t=608, seed=1)
    out["tiny608"] = d / "tiny608.pt"
    torch.save(sd, out["tiny608"])
    sd_as = make_checkpoint(width=128, depth=2, n_t=992, seed=2, with_audioset_head=True, n_classes=527)
    out["tiny992_as"] = d / "tiny992_as.pt"
    torch.save(sd_as, out["tiny992_as"])
    return out


@pytest.fixture()
def server():
    srv = FakeServer().start()
    yield srv
    srv.stop()


@pytest.fixture()
def hub(server, tmp_path, monkeypatch):
    """The loopback server wired in as both the Hub endpoint and the release base URL."""
    patch_hub(monkeypatch, server.url, tmp_path / "hf_home")
    monkeypatch.setenv("MATPAC_RELEASE_URL", server.url + "/")
    return server


def write_audio(
    path: Path, seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0, subtype: str | None = None
) -> Path:
    """Noise plus a tone, so every chunk has energy in many mel bands."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    base = 0.1 * rng.standard_normal((n, channels)) + 0.2 * np.sin(2 * np.pi * (220 + 110 * seed) * t)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, base.astype(np.float32) if channels > 1 else base[:, 0].astype(np.float32), sr, subtype=subtype)
    return path


def run_matpac(
    args: list[str], env: dict | None = None, input: bytes | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real command in a subprocess (stdout, stderr and exit status as a shell sees them)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "matpac_cli", *args],
        env=full_env,
        input=input,
        capture_output=True,
        cwd=cwd,
        timeout=timeout,
    )
