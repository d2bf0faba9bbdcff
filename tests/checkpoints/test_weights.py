"""Weights: the real download code (huggingface_hub + the release downloader) against the loopback
server, the cache, offline mode, checksums, key mapping, strict loading and model-name errors.

Nothing here mocks a download function: `hub` (conftest) points HF_ENDPOINT and
MATPAC_RELEASE_URL at a FakeServer on 127.0.0.1, and every file travels over HTTP.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, run_matpac, write_audio
from fakeserver import FakeServer, patch_hub
from reference import make_checkpoint
from safetensors.torch import save as st_save

from matpac_cli.checkpoints import resolve as W
from matpac_cli.checkpoints.registry import load_registry
from matpac_cli.errors import ModelError, WeightsError
from matpac_cli.inference.predictor import Predictor

MODEL = "matpac-plus"
HUB_REPO = "auriankelen/matpac_general_audio"
RELEASE = "MATPAC%2B%2B/matpac_plus_6s_2048_enconly.pt"
RELEASE_LOCAL = "MATPAC++/matpac_plus_6s_2048_enconly.pt"  # where the cache keeps it (unquoted)
KNOWN = ["matpac-plus", "matpac-plus-music", "matpac", "matpac-plus-audioset", "matpac-plus-audioset-encoder"]


# ---------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return make_checkpoint(width=128, depth=2, n_t=608, seed=11)


@pytest.fixture(scope="module")
def sd_other() -> dict[str, torch.Tensor]:
    return make_checkpoint(width=128, depth=2, n_t=608, seed=12)


@pytest.fixture(scope="module")
def wave() -> tuple[np.ndarray, np.ndarray]:
    """Two chunks of different widths (1.0 s and 0.5 s at 16 kHz), zero-padded into one batch."""
    rng = np.random.default_rng(3)
    waves = np.zeros((2, 16000), dtype=np.float32)
    waves[0] = 0.2 * rng.standard_normal(16000)
    waves[1, :8000] = 0.2 * rng.standard_normal(8000)
    return waves, np.array([16000, 8000])


def pt_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def st_bytes(state: dict, prefix: str = "") -> bytes:
    return st_save({prefix + k: v.contiguous() for k, v in state.items()})


def columns(model, wave) -> np.ndarray:
    """The last-layer time columns a loaded model gives for the fixed test batch."""
    p = Predictor.load(model, device="cpu", precision="fp32")
    return p.columns(wave[0], wave[1], (p.dims.depth,))[p.dims.depth]


def local_columns(state: dict, tmp_path: Path, wave, name: str = "local.pt") -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(pt_bytes(state))
    return columns(str(path), wave)


def hub_file(home: Path, repo: str = HUB_REPO, filename: str = "model.safetensors", revision: str = "main") -> Path:
    commit = FakeServer.commit_for(repo, revision)
    return home / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / commit / filename


def transformers_style(state: dict) -> dict:
    """Names a transformers port might use: nothing maps onto the release layout."""
    out = {}
    for k, v in state.items():
        k = (
            k.replace("student_encoder.blocks.", "encoder.layer.")
            .replace("cls_token", "embeddings.cls_token_param")
            .replace("pos_embed", "embeddings.position_embeddings")
            .replace("patch_embed.proj", "embeddings.patch_embeddings.projection")
        )
        out["matpac." + k] = v
    return out


@pytest.fixture()
def home(tmp_path) -> Path:
    return tmp_path / "hf_home"


# ---------------------------------------------------------------------------------------- Hub


def test_hub_download_maps_prefixed_keys_and_matches_local_release_file(hub, home, sd, wave, tmp_path):
    """A safetensors port with `encoder.` on every key lands in the HF cache and computes exactly
    what the same weights in a release-layout .pt compute."""
    hub.add_hub_file(HUB_REPO, "README.md", b"# matpac\n")
    hub.add_hub_file(HUB_REPO, "model.safetensors", st_bytes(sd, "encoder."))
    commit = FakeServer.commit_for(HUB_REPO, "main")

    res = W.resolve(MODEL)

    assert res.source == f"hub:{HUB_REPO}@{commit}"
    assert res.path == hub_file(home)
    assert res.path.is_file() and Path(res.path).is_relative_to(home / "hub")
    assert res.sha256 == hashlib.sha256(st_bytes(sd, "encoder.")).hexdigest()
    state = res.load()
    assert "student_encoder.norm.weight" in state and not any(k.startswith("encoder.") for k in state)
    assert hub.count("GET", f"/{HUB_REPO}/resolve/") == 1
    assert hub.count("GET", "enconly") == 0  # the release was never needed

    from_hub = columns(MODEL, wave)
    from_file = local_columns(sd, tmp_path, wave)
    other = local_columns(make_checkpoint(width=128, depth=2, n_t=608, seed=99), tmp_path, wave, "other.pt")
    np.testing.assert_array_equal(from_hub, from_file)
    assert not np.allclose(from_hub, other)


def test_hub_model_prefix_and_second_resolve_reuses_cache(hub, home, sd, wave, tmp_path):
    hub.add_hub_file(HUB_REPO, "model.safetensors", st_bytes(sd, "model."))
    first = W.resolve(MODEL)
    second = W.resolve(MODEL)
    assert first.path == second.path and first.sha256 == second.sha256
    assert hub.count("GET", "/resolve/") == 1  # the weights travelled once
    np.testing.assert_array_equal(columns(MODEL, wave), local_columns(sd, tmp_path, wave))


def test_hf_spec_with_revision_picks_that_revision(hub, home, sd, sd_other, wave, tmp_path):
    hub.add_hub_file("someone/port", "weights/encoder.safetensors", st_bytes(sd_other, "encoder."))
    hub.add_hub_file("someone/port", "weights/encoder.safetensors", st_bytes(sd, "encoder."), revision="v1")
    commit_v1 = FakeServer.commit_for("someone/port", "v1")

    res = W.resolve("hf:someone/port@v1")
    assert res.source == f"hub:someone/port@{commit_v1}"
    assert res.path == hub_file(home, "someone/port", "weights/encoder.safetensors", "v1")

    expected = local_columns(sd, tmp_path, wave)
    np.testing.assert_array_equal(columns("hf:someone/port@v1", wave), expected)
    # by commit sha too, and the default revision is a different checkpoint
    np.testing.assert_array_equal(columns(f"hf:someone/port@{commit_v1}", wave), expected)
    assert not np.allclose(columns("hf:someone/port", wave), expected)


def test_hf_spec_errors_are_one_line_weights_errors(hub):
    with pytest.raises(ModelError, match="OWNER/REPO"):
        W.resolve("hf:no-slash")
    with pytest.raises(WeightsError, match="RepositoryNotFound"):
        W.resolve("hf:nobody/nothing")


# ---------------------------------------------------------------------------------------- release


def test_release_fallback_interrupted_download_resumes_with_range(hub, home, sd, monkeypatch):
    """No Hub repo -> the release file; a cut connection leaves .part, the next call resumes."""
    data = pt_bytes(sd)
    hub.add_release_file(RELEASE, data)
    cut = len(data) // 3
    hub.fail_after_bytes[RELEASE] = cut
    ranges: list[str | None] = []
    send = hub._send_bytes

    def spy(h, method, body, headers, fail_key):
        if fail_key is not None:
            ranges.append(h.headers.get("Range"))
        return send(h, method, body, headers, fail_key)

    monkeypatch.setattr(hub, "_send_bytes", spy)
    dest = home / "matpac" / "releases" / RELEASE_LOCAL
    part = dest.with_name(dest.name + ".part")

    with pytest.raises(WeightsError) as info:
        W.resolve(MODEL)
    assert "Hub" in str(info.value) and "release" in str(info.value)
    assert not dest.exists()
    assert part.is_file() and part.stat().st_size == cut
    assert part.read_bytes() == data[:cut]

    res = W.resolve(MODEL)

    assert res.path == dest
    assert res.source == f"release:{hub.url}/{RELEASE}"
    assert dest.read_bytes() == data
    assert not part.exists()
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert hub.count("GET", "/MATPAC%2B%2B/matpac_plus_6s_2048_enconly.pt") == 2
    assert ranges == [None, f"bytes={cut}-"]


def test_release_download_cli_then_embed_uses_cache(hub, home, sd, tmp_path):
    """`matpac models download` (a subprocess, env only) fetches the release; a later run does not."""
    hub.add_release_file(RELEASE, pt_bytes(sd))
    env = {"HF_ENDPOINT": hub.url, "MATPAC_RELEASE_URL": hub.url + "/", "HF_HOME": str(home)}
    r = run_matpac(["models", "download", MODEL], env=env)
    assert r.returncode == 0, r.stderr.decode()
    dest = home / "matpac" / "releases" / RELEASE_LOCAL
    assert dest.read_bytes() == pt_bytes(sd)
    assert str(dest) in r.stderr.decode()
    gets = hub.count("GET", "enconly")
    assert W.resolve(MODEL).path == dest
    assert hub.count("GET", "enconly") == gets


def test_release_complete_part_file_is_finished_not_stuck(hub, home, sd):
    data = pt_bytes(sd)
    hub.add_release_file(RELEASE, data)
    dest = home / "matpac" / "releases" / RELEASE_LOCAL
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(data)  # killed between last write and rename
    res = W.resolve(MODEL)
    assert res.path.read_bytes() == data


# ---------------------------------------------------------------------------------------- offline


def test_offline_after_hub_download_makes_no_requests(hub, home, sd, wave, tmp_path, monkeypatch):
    hub.add_hub_file(HUB_REPO, "model.safetensors", st_bytes(sd, "encoder."))
    online = W.resolve(MODEL)
    before = len(hub.requests)

    patch_hub(monkeypatch, hub.url, home, offline=True)
    res = W.resolve(MODEL)
    assert res.path == online.path and res.sha256 == online.sha256
    np.testing.assert_array_equal(columns(MODEL, wave), local_columns(sd, tmp_path, wave))
    assert len(hub.requests) == before

    # the command a user runs on the plane: env only, no network, same numbers
    clip = write_audio(tmp_path / "in" / "a.wav", 0.5)
    env = {"HF_ENDPOINT": hub.url, "MATPAC_RELEASE_URL": hub.url + "/", "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    r = run_matpac(["embed", str(clip), "--out", str(tmp_path / "e.npy"), "--device", "cpu"], env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert np.load(tmp_path / "e.npy").shape == (1, 640)
    assert len(hub.requests) == before


def test_offline_after_release_download_makes_no_requests(hub, home, sd, monkeypatch):
    hub.add_release_file(RELEASE, pt_bytes(sd))
    online = W.resolve(MODEL)
    before = len(hub.requests)
    patch_hub(monkeypatch, hub.url, home, offline=True)
    res = W.resolve(MODEL)
    assert res.path == online.path and res.source == online.source
    assert len(hub.requests) == before


def test_offline_model_never_downloaded_says_how_to_fetch_it(hub, home, sd, monkeypatch):
    hub.add_hub_file(HUB_REPO, "model.safetensors", st_bytes(sd, "encoder."))
    hub.add_release_file("MATPAC%2B%2B/matpac_plus_music_6s_2048_enconly.pt", pt_bytes(sd))
    patch_hub(monkeypatch, hub.url, home, offline=True)
    with pytest.raises(WeightsError) as info:
        W.resolve("matpac-plus-music")
    assert "matpac models download matpac-plus-music" in str(info.value)
    assert hub.requests == []


def test_offline_cli_error_exit_2(hub, home, tmp_path):
    clip = write_audio(tmp_path / "a.wav", 0.5)
    env = {"HF_ENDPOINT": hub.url, "MATPAC_RELEASE_URL": hub.url + "/", "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    r = run_matpac(["embed", str(clip), "--out", str(tmp_path / "e.npy")], env=env)
    assert r.returncode == 2
    assert "matpac models download matpac-plus" in r.stderr.decode()
    assert not (tmp_path / "e.npy").exists()
    assert hub.requests == []


# ---------------------------------------------------------------------------------------- checksums


def _cli_env(hub, home) -> dict:
    return {"HF_ENDPOINT": hub.url, "MATPAC_RELEASE_URL": hub.url + "/", "HF_HOME": str(home)}


@pytest.mark.parametrize("source", ["hub", "release"])
def test_corrupted_cache_file_is_refused_and_verify_reports_it(hub, home, sd, source):
    if source == "hub":
        hub.add_hub_file(HUB_REPO, "model.safetensors", st_bytes(sd, "encoder."))
    else:
        hub.add_release_file(RELEASE, pt_bytes(sd))
    res = W.resolve(MODEL)
    assert res.source.startswith(source)

    ok = run_matpac(["models", "verify"], env=_cli_env(hub, home))
    assert ok.returncode == 0, ok.stderr.decode()
    assert f"ok\t{MODEL}\t{res.sha256}" in ok.stdout.decode()
    assert "MISMATCH" not in ok.stdout.decode()

    with open(res.path, "ab") as fh:  # one byte of rot
        fh.write(b"\0")

    with pytest.raises(WeightsError, match="checksum mismatch"):
        W.resolve(MODEL)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        Predictor.load(MODEL, device="cpu")

    bad = run_matpac(["models", "verify"], env=_cli_env(hub, home))
    assert bad.returncode == 2
    assert f"MISMATCH\t{MODEL}" in bad.stdout.decode()
    assert "1 mismatched" in bad.stderr.decode()


def test_corrupted_release_file_is_repaired_by_download_force(hub, home, sd):
    data = pt_bytes(sd)
    hub.add_release_file(RELEASE, data)
    path = W.resolve(MODEL).path
    with open(path, "ab") as fh:
        fh.write(b"\0")
    r = run_matpac(["models", "download", MODEL, "--force"], env=_cli_env(hub, home))
    assert r.returncode == 0, r.stderr.decode()
    assert path.read_bytes() == data
    assert W.resolve(MODEL).path == path


@pytest.mark.parametrize("repair", ["force", "delete"])
def test_corrupted_hub_file_can_be_repaired_as_the_error_says(hub, home, sd, repair):
    data = st_bytes(sd, "encoder.")
    hub.add_hub_file(HUB_REPO, "model.safetensors", data)
    path = W.resolve(MODEL).path
    with open(path, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(WeightsError, match="checksum mismatch") as info:
        W.resolve(MODEL)
    if repair == "force":
        r = run_matpac(["models", "download", MODEL, "--force"], env=_cli_env(hub, home))
    else:  # "checksum mismatch for PATH (...): ... delete it and run `matpac models download matpac-plus`"
        named = Path(re.search(r"checksum mismatch for (.+?) \(sha256", str(info.value)).group(1))
        assert named.is_file()
        named.unlink()
        r = run_matpac(["models", "download", MODEL], env=_cli_env(hub, home))
    assert r.returncode == 0, r.stderr.decode()
    assert W.resolve(MODEL).path.read_bytes() == data


# ---------------------------------------------------------------------------------------- key mapping


def test_unmappable_hub_keys_fall_back_to_release(hub, home, sd, wave, tmp_path):
    hub.add_hub_file(HUB_REPO, "model.safetensors", st_bytes(transformers_style(sd)))
    hub.add_release_file(RELEASE, pt_bytes(sd))
    res = W.resolve(MODEL)
    assert res.source == f"release:{hub.url}/{RELEASE}"
    assert hub.count("GET", f"/{HUB_REPO}/resolve/") == 1  # the Hub copy was tried first
    np.testing.assert_array_equal(columns(MODEL, wave), local_columns(sd, tmp_path, wave))


def test_neither_source_works_error_names_both_reasons(hub, home, sd):
    hub.add_hub_file(HUB_REPO, "model.safetensors", st_bytes(transformers_style(sd)))
    with pytest.raises(WeightsError) as info:
        W.resolve(MODEL)
    msg = str(info.value)
    assert msg.startswith(f"cannot get model {MODEL}")
    hub_reason, _, release_reason = msg.partition("; release:")
    assert "Hub:" in hub_reason and "cls_token" in hub_reason
    assert "enconly.pt" in release_reason and "Not Found" in release_reason
    assert "\n" not in msg


def test_hub_answering_garbage_falls_back_to_release(server, home, sd, monkeypatch):
    """A proxy / captive portal that answers every Hub request with an HTML page (status 200)."""
    server.add_release_file(RELEASE, pt_bytes(sd))
    server.add_release_file(f"portal/api/models/{HUB_REPO}/tree/main", b"<html>Please log in</html>")
    server.add_release_file(f"portal/api/models/{HUB_REPO}", b"<html>Please log in</html>")
    patch_hub(monkeypatch, server.url + "/portal", home)
    monkeypatch.setenv("MATPAC_RELEASE_URL", server.url + "/")
    res = W.resolve(MODEL)
    assert res.source == f"release:{server.url}/{RELEASE}"


def test_hub_repo_without_weights_falls_back(hub, home, sd):
    hub.add_hub_file(HUB_REPO, "README.md", b"nothing here")
    hub.add_release_file(RELEASE, pt_bytes(sd))
    assert W.resolve(MODEL).source.startswith("release:")


def test_partly_mappable_hub_port_falls_back_to_release(hub, home, sd, wave, tmp_path):
    split = {}
    for k, v in sd.items():
        if k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias"):
            stem, kind = k.rsplit(".qkv.", 1)
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                split[f"{stem}.{name}.{kind}"] = part.contiguous()
        else:
            split[k] = v
    hub.add_hub_file(HUB_REPO, "model.safetensors", st_bytes(split, "encoder."))
    hub.add_release_file(RELEASE, pt_bytes(sd))
    np.testing.assert_array_equal(columns(MODEL, wave), local_columns(sd, tmp_path, wave))


# ---------------------------------------------------------------------------------------- strict loading, names


def test_checkpoint_missing_a_key_is_refused_naming_it(tmp_path, sd, capsys):
    bad = dict(sd)
    del bad["student_encoder.norm.weight"]
    torch.save(bad, tmp_path / "bad.pt")
    clip = write_audio(tmp_path / "in" / "a.wav", 0.5)
    rc, _, err = cli(
        capsys, "embed", str(clip.parent), "--out", str(tmp_path / "e.npy"), "--model", str(tmp_path / "bad.pt")
    )
    assert rc == 2
    assert "student_encoder.norm.weight" in err and "missing" in err
    assert "Traceback" not in err
    assert not (tmp_path / "e.npy").exists()


def test_checkpoint_misshapen_key_is_refused_naming_it(tmp_path, sd):
    bad = dict(sd)
    bad["student_encoder.blocks.1.mlp.fc2.bias"] = torch.zeros(7)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"student_encoder\.blocks\.1\.mlp\.fc2\.bias"):
        Predictor.load(str(tmp_path / "bad.pt"), device="cpu")


def test_unknown_model_name_lists_registry_names(tmp_path, capsys):
    clip = write_audio(tmp_path / "a.wav", 0.5)
    rc, _, err = cli(capsys, "embed", str(clip), "--out", str(tmp_path / "e.npy"), "--model", "matpac-pluss")
    assert rc == 2
    assert "matpac-pluss" in err
    for name in KNOWN:
        assert name in err
    assert set(KNOWN) == set(load_registry().models)
    with pytest.raises(ModelError, match="does not exist"):
        W.resolve(str(tmp_path / "missing.pt"))
