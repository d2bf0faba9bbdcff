"""No network, offline mode and `matpac models`: one-line errors that name the way out.

Everything goes through the real download code: a closed loopback port (127.0.0.1:9, conftest's
default) or an unresolvable host name (`.invalid` never resolves, RFC 2606) stands for "no
network"; the FakeServer stands for a working one.
"""

from __future__ import annotations

import ast
import errno
import json
import socket
import sys
import time
import urllib.error
from pathlib import Path

import pytest
from conftest import REPO, cli, run_matpac, write_audio
from fakeserver import patch_hub
from probes import zip_bytes

from matpac_cli.checkpoints import resolve as W
from matpac_cli.checkpoints.registry import load_registry
from matpac_cli.errors import ModelError, UsageError, WeightsError

PROBES = "Probes_weights/Weights_probes_matpac.zip"
PROBES_LOCAL = "matpac/releases/Probes_weights/Weights_probes_matpac.zip"
CLOSED = "http://127.0.0.1:9"
NO_DNS = "http://nonexistent.invalid"
# huggingface_hub's list_repo_files retried a refused connection 5 times, sleeping 1+2+4+8+8 s:
# a run that still retries cannot finish under this bound, one that does not (torch import included,
# on a loaded 2-core machine) finishes well inside it.
FAST_S = 20.0


def serve_registry(hub, ckpts) -> dict[str, bytes]:
    """Every registry model as its release file (tiny checkpoints) and a probe zip; Hub repos stay missing."""
    served = {}
    for m in load_registry().models.values():
        data = ckpts["tiny992_as" if "audioset" in m.name else "tiny608"].read_bytes()
        hub.add_release_file(m.release, data)
        served[m.name] = data
    zdata = zip_bytes({"matpac++_music/mtg_genre.pth": b"x", "matpac++_general_audio/esc50.pth": b"y"})
    hub.add_release_file(PROBES, zdata)
    served["probes"] = zdata
    return served


def env_for(tmp_path: Path, endpoint: str, release: str | None = None, **extra: str) -> dict:
    return {
        "HF_ENDPOINT": endpoint,
        "MATPAC_RELEASE_URL": (release or endpoint) + "/",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **extra,
    }


def assert_no_network_line(err: str, fetch: str, local: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("matpac: error: ") and "no network" in line
    assert "HF_HUB_OFFLINE=1" in line and local in line and f"`{fetch}`" in line
    assert "Retry" not in err and "resume" not in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------- no network


@pytest.mark.parametrize("endpoint", [CLOSED, NO_DNS], ids=["refused", "dns"])
def test_embed_without_network_fails_at_once_in_one_line(tmp_path, endpoint):
    clip = write_audio(tmp_path / "clips" / "a.wav", 0.5)
    started = time.monotonic()
    r = run_matpac(
        ["embed", str(clip.parent), "--out", str(tmp_path / "e.npy"), "--device", "cpu"],
        env=env_for(tmp_path, endpoint),
        timeout=120,
    )
    elapsed = time.monotonic() - started
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert_no_network_line(err, "matpac models download matpac-plus", "--model FILE")
    assert ("connection refused" if endpoint == CLOSED else "host name not resolved") in err
    assert elapsed < FAST_S, f"took {elapsed:.1f}s"
    assert not (tmp_path / "e.npy").exists()
    assert not list((tmp_path / "hf_home").rglob("*.part"))


def test_tag_with_cached_model_but_no_network_for_the_probes(hub, ckpts, tmp_path, monkeypatch, capsys):
    """The model comes from the cache; the probe zip's host refuses: the error is about the probes."""
    hub.add_release_file(load_registry().models["matpac-plus-music"].release, ckpts["tiny608"].read_bytes())
    W.resolve("matpac-plus-music")
    patch_hub(monkeypatch, CLOSED, tmp_path / "hf_home")
    monkeypatch.setenv("MATPAC_RELEASE_URL", CLOSED + "/")
    clip = write_audio(tmp_path / "a.wav", 0.5)
    rc, out, err = cli(capsys, "tag", clip, "--head", "genre", "--device", "cpu")
    assert rc == 2
    assert_no_network_line(err, "matpac models download probes", "--head FILE")
    assert "probe" in err


def test_hf_spec_without_network_is_one_no_network_error():
    started = time.monotonic()
    with pytest.raises(W.NoNetwork) as info:
        W.resolve("hf:someone/port")
    assert time.monotonic() - started < 5
    assert "`matpac models download hf:someone/port`" in str(info.value) and "\n" not in str(info.value)


def test_release_download_cut_part_way_says_resume_other_failures_do_not(hub, ckpts):
    data = ckpts["tiny608"].read_bytes()
    release = load_registry().models["matpac"].release  # release-only model
    with pytest.raises(WeightsError) as missing:
        W.resolve("matpac")  # 404: nothing received
    assert "Not Found" in str(missing.value) and "resume" not in str(missing.value)

    hub.add_release_file(release, data)
    hub.fail_after_bytes[release] = len(data) // 2
    with pytest.raises(WeightsError) as cut:
        W.resolve("matpac")
    msg = str(cut.value)
    assert "run again to resume" in msg and msg.count("resume") == 1 and "no network" not in msg
    assert W.resolve("matpac").path.read_bytes() == data


@pytest.mark.parametrize(
    "exc, why",
    [
        (urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")), "host name not resolved"),
        (urllib.error.URLError(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), "connection refused"),
        (urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable")), "network unreachable"),
        (urllib.error.URLError(OSError(errno.EHOSTUNREACH, "No route to host")), "host unreachable"),
        (urllib.error.URLError(TimeoutError("timed out")), "connection timed out"),
        (urllib.error.HTTPError("http://x", 503, "Unavailable", None, None), None),  # the server answered
        (ConnectionResetError(errno.ECONNRESET, "reset"), None),  # connected, then dropped
    ],
)
def test_connection_failures_are_told_apart_from_server_errors(exc, why):
    assert W.connection_failure(exc) == why


# ---------------------------------------------------------------------------------------- offline


def test_offline_tag_without_the_probe_zip_names_the_command(hub, ckpts, tmp_path, monkeypatch, capsys):
    hub.add_release_file(load_registry().models["matpac-plus-music"].release, ckpts["tiny608"].read_bytes())
    W.resolve("matpac-plus-music")
    patch_hub(monkeypatch, hub.url, tmp_path / "hf_home", offline=True)
    before = len(hub.requests)
    clip = write_audio(tmp_path / "a.wav", 0.5)
    rc, out, err = cli(capsys, "tag", clip, "--head", "genre", "--device", "cpu")
    assert rc == 2
    assert "HF_HUB_OFFLINE" in err and "`matpac models download probes`" in err
    assert len(err.strip().splitlines()) == 1
    assert len(hub.requests) == before


def test_offline_download_says_it_cannot_download(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for names in (["matpac-plus"], ["matpac-plus", "probes"], ["all"]):
        rc, out, err = cli(capsys, "models", "download", *names)
        assert rc == 2
        assert "cannot download while HF_HUB_OFFLINE is set" in err
        assert "run `matpac models download" not in err
        assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- models download


def test_download_several_names_in_one_command(hub, ckpts, tmp_path):
    served = serve_registry(hub, ckpts)
    r = run_matpac(["models", "download", "matpac-plus", "probes"], env=env_for(tmp_path, hub.url))
    assert r.returncode == 0, r.stderr.decode()
    home = tmp_path / "hf_home"
    reg = load_registry()
    assert W.release_path(reg.models["matpac-plus"].release).read_bytes() == served["matpac-plus"]
    assert (home / PROBES_LOCAL).read_bytes() == served["probes"]
    assert not W.release_path(reg.models["matpac"].release).exists()
    assert "probe heads ready" in r.stderr.decode()


def test_download_all_fetches_every_model_and_the_probes(hub, ckpts, tmp_path, capsys):
    served = serve_registry(hub, ckpts)
    rc, out, err = cli(capsys, "models", "download", "all")
    assert rc == 0, err
    for m in load_registry().models.values():
        assert W.release_path(m.release).read_bytes() == served[m.name], m.name
        assert f"matpac: {m.name} ready" in err
    assert (tmp_path / "hf_home" / PROBES_LOCAL).read_bytes() == served["probes"]
    rc, out, err = cli(capsys, "models", "list", "--json")
    data = json.loads(out)
    assert all(m["cached"] for m in data["models"]) and data["probes"]["cached"]


def test_download_force_refetches_a_rotten_probe_zip(hub, ckpts, tmp_path, capsys):
    """The checksum error says `matpac models download probes --force`; that must repair it."""
    served = serve_registry(hub, ckpts)
    assert cli(capsys, "models", "download", "probes")[0] == 0
    zpath = tmp_path / "hf_home" / PROBES_LOCAL
    with open(zpath, "ab") as fh:
        fh.write(b"\0")
    rc, out, err = cli(capsys, "models", "verify")
    assert rc == 2 and "matpac models download probes --force" in err
    rc, out, err = cli(capsys, "models", "download", "probes", "--force")
    assert rc == 0, err
    assert zpath.read_bytes() == served["probes"]


@pytest.mark.parametrize(
    "args, hint",
    [
        (["models", "download", "matpac-pluss"], "did you mean matpac-plus?"),
        (["models", "download", "probe"], "did you mean probes?"),
        (["models", "labels", "genr"], "did you mean genre?"),
    ],
)
def test_unknown_names_get_a_suggestion(capsys, args, hint):
    rc, out, err = cli(capsys, *args)
    assert rc == 2
    assert hint in err and len(err.strip().splitlines()) == 1


def test_unknown_model_and_head_names_in_the_library_get_a_suggestion():
    with pytest.raises(ModelError, match=r"did you mean matpac-plus\?") as info:
        W.resolve("matpac-pluss")
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match=r"did you mean genre\?"):
        load_registry().head("genr")
    with pytest.raises(UsageError) as far:
        load_registry().head("zzzz")
    assert "did you mean" not in str(far.value)


# ---------------------------------------------------------------------------------------- models list


def test_models_list_is_tab_separated_in_a_pipe(tmp_path):
    r = run_matpac(["models", "list"], env=env_for(tmp_path, CLOSED))
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert not any(ch in out for ch in "┏━┃│└─")
    models, heads = out.split("\n\n")
    rows = [line.split("\t") for line in models.splitlines()]
    assert rows[0] == ["model", "description", "family", "source", "cached"]
    assert [r[0] for r in rows[1:]] == list(load_registry().models)
    assert all(len(r) == len(rows[0]) for r in rows)
    head_rows = {line.split("\t")[0]: line.split("\t") for line in heads.splitlines()}
    header = head_rows.pop("head")
    assert header == ["head", "aliases", "classes", "activation", "encoders", "cached", "label_order"]
    assert head_rows["mtg_genre"][4] == "matpac-plus,matpac-plus-music"
    assert head_rows["audioset"][4] == "matpac-plus-audioset"


def test_models_list_json_says_which_encoders_each_head_exists_for(capsys):
    rc, out, err = cli(capsys, "models", "list", "--json")
    assert rc == 0
    data = json.loads(out)
    heads = {h["name"]: h for h in data["heads"]}
    assert set(heads) == set(load_registry().heads)
    for name, h in heads.items():
        want = ["matpac-plus-audioset"] if name == "audioset" else ["matpac-plus", "matpac-plus-music"]
        assert h["encoders"] == want, name
    assert {m["name"] for m in data["models"]} == set(load_registry().models)
    assert not any(m["cached"] for m in data["models"]) and data["probes"]["cached"] is False


def test_models_list_reads_the_cached_zip_for_the_encoders(hub, ckpts, capsys):
    serve_registry(hub, ckpts)  # zip: mtg_genre for music only, esc50 for general audio only
    assert cli(capsys, "models", "download", "probes")[0] == 0
    heads = {h["name"]: h for h in json.loads(cli(capsys, "models", "list", "--json")[1])["heads"]}
    assert heads["mtg_genre"]["encoders"] == ["matpac-plus-music"]
    assert heads["esc50"]["encoders"] == ["matpac-plus"]
    assert heads["openmic"]["encoders"] == [] and heads["mtg_genre"]["cached"] is True


def test_models_list_on_a_terminal_is_a_table(capsys, monkeypatch):
    capsys.readouterr()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    rc, out, err = cli(capsys, "models", "list")
    assert rc == 0
    assert "┃" in out and "matpac-plus-audioset" in out and "\t" not in out


# ---------------------------------------------------------------------------------------- imports


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_weights_does_not_import_heads_and_old_imports_still_work():
    assert "matpac_cli.inference.heads" not in _imports(REPO / "matpac_cli" / "checkpoints" / "resolve.py")
    from matpac_cli.inference.heads import has_audioset_head, split_head_keys

    enc, heads = split_head_keys({"cls_token": 1, "head.weight": 2, "head_norm.running_var": 3})
    assert enc == {"cls_token": 1} and set(heads) == {"head.weight", "head_norm.running_var"}
    assert not has_audioset_head(enc)
