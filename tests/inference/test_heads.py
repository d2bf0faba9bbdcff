"""Classifier heads of `matpac tag`: the probe zip, local probe files, the AudioSet head, labels.

Weights come from the loopback FakeServer through the real download code (the release base URL
and HF_ENDPOINT point at it); the expected scores come from tests/reference.py arithmetic on the
tiny width-128 checkpoints (clip embedding 5 * 128 = 640-d, so probe weights are (C, 640)).

The helpers are shared with the other tag tests: tests/probes.py, and the fixtures in conftest.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import reference as R
import torch
from conftest import REPO, cli, load_sd, read_wave, run_matpac
from probes import (
    DEFAULT_HEADS,
    EMB,
    GENERAL,
    MUSIC,
    RELEASE_GENERAL,
    RELEASE_PROBES,
    SPEC_HEADS,
    TOL,
    assert_scores,
    by_file_head,
    entry_name,
    expected_probe,
    label_file,
    parse_csv,
    probe_args,
    probe_tensors,
    serve_music_model,
    serve_probes,
    tag_labels,
    torch_bytes,
    zip_bytes,
)

# ------------------------------------------------------------------------------------ probe zip


@pytest.mark.parametrize(
    "layout,style",
    [("flat", "probe"), ("nested", "probe"), ("wrapped", "probe"), ("nested", "bare"), ("flat", "stats")],
)
def test_default_heads_from_probe_zip_match_reference(hub, ckpts, music_dir, ref608, capsys, layout, style):
    """`matpac tag DIR --top-k 0`: default model matpac-plus-music, heads genre, mood, instrument."""
    serve_music_model(hub, ckpts)
    styles = {"mtg_mood": style} if style == "stats" else {t: style for t in DEFAULT_HEADS}
    probes = serve_probes(hub, layout, styles)
    rc, out, err = cli(capsys, "tag", music_dir, "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    groups = by_file_head(parse_csv(out))
    assert set(groups) == {(f, h) for f in ("a.wav", "b.flac") for h in DEFAULT_HEADS}
    for (fname, head), rows in groups.items():
        classes, activation, lab = SPEC_HEADS[head]
        assert len(rows) == classes
        assert_scores(rows, tag_labels(lab), expected_probe(ref608[fname], probes[(MUSIC, head)], activation))
        assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    # the heads were read from the music folder only, so one download each, no Hub model
    assert hub.count("GET", "Weights_probes_matpac.zip") == 1
    assert hub.count("GET", "matpac_plus_music_6s_2048_enconly.pt") == 1
    if style == "stats":
        assert "mtg_mood" in err and "standardis" in err
        assert "mtg_genre: standardis" not in err
    else:
        assert "standardis" not in err


def test_sigmoid_heads_are_not_softmaxed(hub, ckpts, music_dir, ref608, capsys):
    """Multi-label heads must not sum to one (the authors' demo softmax is wrong for them)."""
    serve_music_model(hub, ckpts)
    serve_probes(hub)
    rc, out, err = cli(capsys, "tag", music_dir / "a.wav", "--head", "genre", "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    total = sum(float(r["score"]) for r in parse_csv(out))
    assert total > 2.0  # 87 independent probabilities


def test_music_model_from_the_hub(hub, ckpts, music_dir, ref608, capsys):
    """The registry model's Hub copy (safetensors, release layout) is used when the repo exists."""
    from safetensors.torch import save as st_save

    sd = load_sd(ckpts["tiny608"])
    hub.add_hub_file(
        "auriankelen/matpac_music", "model.safetensors", st_save({k: v.contiguous() for k, v in sd.items()})
    )
    hub.add_hub_file("auriankelen/matpac_music", "README.md", b"# port\n")
    probes = serve_probes(hub)
    rc, out, err = cli(capsys, "tag", music_dir / "a.wav", "--head", "instrument", "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    rows = by_file_head(parse_csv(out))[("a.wav", "mtg_instrument")]
    assert_scores(
        rows,
        tag_labels("mtg_instrument.txt"),
        expected_probe(ref608["a.wav"], probes[(MUSIC, "mtg_instrument")], "sigmoid"),
    )
    assert hub.count("GET", "matpac_plus_music_6s_2048_enconly.pt") == 0


class _NoSleep:
    """`time` for huggingface_hub's retry loop without the waits (keeps the test fast)."""

    def __getattr__(self, name):
        import time

        return getattr(time, name)

    @staticmethod
    def sleep(_seconds: float) -> None:
        return None


def test_unreachable_hub_falls_back_to_the_release(server, ckpts, music_dir, ref608, monkeypatch, capsys):
    """HF_ENDPOINT refuses connections (Hub blocked), the release host works: tag still runs.

    (Regression: huggingface_hub's httpx ConnectError used to escape weights._guard as a traceback.)
    """
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http, "time", _NoSleep())
    monkeypatch.setenv("MATPAC_RELEASE_URL", server.url + "/")  # HF_ENDPOINT stays a closed port
    serve_music_model(server, ckpts)
    probes = serve_probes(server)
    rc, out, err = cli(capsys, "tag", music_dir / "a.wav", "--head", "genre", "--top-k", "0", "--device", "cpu")
    assert rc == 0, err
    assert_scores(
        by_file_head(parse_csv(out))[("a.wav", "mtg_genre")],
        tag_labels("mtg_genre.txt"),
        expected_probe(ref608["a.wav"], probes[(MUSIC, "mtg_genre")], "sigmoid"),
    )


def test_softmax_head_of_general_audio_family(hub, ckpts, music_dir, ref608, capsys):
    """`--model matpac-plus --head esc50`: read from matpac++_general_audio, softmax, sums to 1."""
    hub.add_release_file(RELEASE_GENERAL, ckpts["tiny608"].read_bytes())
    probes = serve_probes(hub, "flat", music=DEFAULT_HEADS + ("esc50",))  # decoy esc50 for music
    rc, out, err = cli(
        capsys, "tag", music_dir, "--model", "matpac-plus", "--head", "esc50", "--top-k", "0", "--device", "cpu"
    )
    assert rc == 0, err
    groups = by_file_head(parse_csv(out))
    assert set(groups) == {("a.wav", "esc50"), ("b.flac", "esc50")}
    for (fname, _), rows in groups.items():
        assert len(rows) == 50
        assert_scores(
            rows, tag_labels("esc50.txt"), expected_probe(ref608[fname], probes[(GENERAL, "esc50")], "softmax")
        )
        assert abs(sum(float(r["score"]) for r in rows) - 1.0) <= 1e-4


def test_same_task_in_both_family_folders_picks_the_model_family(hub, ckpts, music_dir, ref608, capsys):
    """mtg_genre exists in both folders with different weights: matpac-plus reads the general one."""
    hub.add_release_file(RELEASE_GENERAL, ckpts["tiny608"].read_bytes())
    probes = serve_probes(hub, "nested")
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir / "a.wav",
        "--model",
        "matpac-plus",
        "--head",
        "genre",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    rows = by_file_head(parse_csv(out))[("a.wav", "mtg_genre")]
    assert_scores(
        rows, tag_labels("mtg_genre.txt"), expected_probe(ref608["a.wav"], probes[(GENERAL, "mtg_genre")], "sigmoid")
    )


def test_head_missing_from_the_zip_is_a_clear_error(hub, ckpts, music_dir, capsys):
    serve_music_model(hub, ckpts)
    serve_probes(hub, music=("mtg_genre", "mtg_instrument"))
    rc, out, err = cli(capsys, "tag", music_dir, "--device", "cpu")
    assert rc == 2
    assert "mtg_mood" in err and "music" in err
    assert out == ""


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "../../../../escaped.bin",
        "matpac++_music/../../../../../../escaped2.bin",
        "/tmp/matpac_absolute_escape.bin",
    ],
)
def test_hostile_zip_entry_is_refused(hub, ckpts, music_dir, tmp_path, capsys, bad):
    serve_music_model(hub, ckpts)
    entries = {
        entry_name("nested", MUSIC, t): torch_bytes(probe_tensors(SPEC_HEADS[t][0], i))
        for i, t in enumerate(DEFAULT_HEADS)
    }
    entries[bad] = b"owned\n"
    hub.add_release_file(RELEASE_PROBES, zip_bytes(entries))
    cache = tmp_path / "hf_home"
    probes_root = cache / "matpac" / "probes"
    before = set(tmp_path.parent.iterdir())
    for _ in range(2):  # refused again on a second run: no half-extracted folder is trusted
        rc, out, err = cli(capsys, "tag", music_dir, "--device", "cpu")
        assert rc == 2
        assert bad in err and ("unsafe" in err or "refus" in err)
        assert out == ""
    # nothing was extracted at all, and nothing landed outside the cache
    assert not probes_root.exists() or not [p for p in probes_root.rglob("*") if p.is_file()]
    leaf = Path(bad).name
    outside = [p for p in tmp_path.rglob(leaf) if cache not in p.parents]
    assert outside == []
    assert not (tmp_path.parent / leaf).exists()
    assert set(tmp_path.parent.iterdir()) - before == set()
    assert not Path("/tmp/matpac_absolute_escape.bin").exists()
    # `matpac models download probes` refuses it too
    rc, out, err = cli(capsys, "models", "download", "probes")
    assert rc == 2 and bad in err


# ------------------------------------------------------------------------------------ local probe files


@pytest.fixture()
def tiny_probe_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@pytest.mark.parametrize("stem", ["openmic", "esc50"])
def test_local_probe_file_with_registry_name(ckpts, music_dir, ref608, tiny_probe_dir, capsys, stem):
    """`--head ./openmic.pth --model tiny.pt`: labels and activation from the registry; no download."""
    classes, activation, labels = SPEC_HEADS[stem]
    sd = probe_tensors(classes, seed=7)
    torch.save(sd, tiny_probe_dir / f"{stem}.pth")
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir,
        "--model",
        ckpts["tiny608"],
        "--head",
        f"./{stem}.pth",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    groups = by_file_head(parse_csv(out))
    assert set(groups) == {("a.wav", stem), ("b.flac", stem)}
    for (fname, _), rows in groups.items():
        assert len(rows) == classes
        assert_scores(rows, tag_labels(labels), expected_probe(ref608[fname], sd, activation))


def test_unknown_probe_needs_labels(ckpts, music_dir, ref608, tiny_probe_dir, capsys):
    sd = probe_tensors(7, seed=8)
    torch.save(sd, tiny_probe_dir / "birds.pth")
    rc, out, err = cli(
        capsys, "tag", music_dir, "--model", ckpts["tiny608"], "--head", "./birds.pth", "--device", "cpu"
    )
    assert rc == 2
    assert "--labels" in err and "birds" in err
    assert out == ""

    names = ["robin", "wren", "crow", "owl", "gull", "tit", "jay"]
    (tiny_probe_dir / "birds.txt").write_text("\n".join(names) + "\n")
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir,
        "--model",
        ckpts["tiny608"],
        "--head",
        "./birds.pth",
        "--labels",
        "birds.txt",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    groups = by_file_head(parse_csv(out))
    assert set(groups) == {("a.wav", "birds"), ("b.flac", "birds")}
    w, b, _, _ = probe_args(sd)
    for (fname, _), rows in groups.items():
        # label i is class i of the weights: ranking by score is ranking by the reference logits
        logits = ref608[fname] @ w.T + b
        assert [r["label"] for r in rows] == [names[i] for i in np.argsort(-logits, kind="stable")]
        got = np.array([float(r["score"]) for r in rows])
        ordered = np.sort(R._sigmoid_np(logits))[::-1], np.sort(R._softmax_np(logits))[::-1]
        assert min(np.abs(got - e).max() for e in ordered) <= TOL


def test_labels_file_with_wrong_count_is_refused(ckpts, music_dir, tiny_probe_dir, capsys):
    torch.save(probe_tensors(7, seed=8), tiny_probe_dir / "birds.pth")
    (tiny_probe_dir / "birds.txt").write_text("robin\nwren\ncrow\n")
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir,
        "--model",
        ckpts["tiny608"],
        "--head",
        "./birds.pth",
        "--labels",
        "birds.txt",
        "--device",
        "cpu",
    )
    assert rc == 2
    assert "7" in err and "3" in err
    assert out == ""


def test_labels_option_only_names_the_unknown_probe(ckpts, music_dir, ref608, tiny_probe_dir, capsys):
    """`--head ./openmic.pth --head ./birds.pth --labels birds.txt`: openmic keeps its own labels.

    (Regression: resolve_head used to apply --labels to every head, silently relabelling openmic.)
    """
    om = probe_tensors(20, seed=7)
    torch.save(om, tiny_probe_dir / "openmic.pth")
    torch.save(probe_tensors(20, seed=9), tiny_probe_dir / "birds.pth")
    (tiny_probe_dir / "birds.txt").write_text("".join(f"bird{i}\n" for i in range(20)))
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir / "a.wav",
        "--model",
        ckpts["tiny608"],
        "--head",
        "./openmic.pth",
        "--head",
        "./birds.pth",
        "--labels",
        "birds.txt",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    groups = by_file_head(parse_csv(out))
    assert {r["label"] for r in groups[("a.wav", "birds")]} == {f"bird{i}" for i in range(20)}
    assert_scores(
        groups[("a.wav", "openmic")], tag_labels("openmic.txt"), expected_probe(ref608["a.wav"], om, "sigmoid")
    )


def test_probe_with_two_weight_matrices_is_refused(ckpts, music_dir, tiny_probe_dir, capsys):
    sd = probe_tensors(20, seed=7)
    sd["aux_head.weight"] = torch.randn(20, EMB)
    torch.save(sd, tiny_probe_dir / "openmic.pth")
    rc, out, err = cli(
        capsys, "tag", music_dir, "--model", ckpts["tiny608"], "--head", "./openmic.pth", "--device", "cpu"
    )
    assert rc == 2
    assert "probe.weight" in err and "aux_head.weight" in err
    assert out == ""


def test_probe_for_another_encoder_width_is_refused(ckpts, music_dir, tiny_probe_dir, capsys):
    """A ViT-B probe (20, 3840) on the 640-d tiny encoder names the key and its shape."""
    torch.save(probe_tensors(20, seed=7, width=3840), tiny_probe_dir / "openmic.pth")
    rc, out, err = cli(
        capsys, "tag", music_dir, "--model", ckpts["tiny608"], "--head", "./openmic.pth", "--device", "cpu"
    )
    assert rc == 2
    assert "probe.weight" in err and "3840" in err
    assert out == ""


def test_local_probe_with_standardisation_stats(ckpts, music_dir, ref608, tiny_probe_dir, capsys):
    sd = probe_tensors(20, seed=11, style="stats")
    torch.save(sd, tiny_probe_dir / "openmic.pth")
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir / "a.wav",
        "--model",
        ckpts["tiny608"],
        "--head",
        "./openmic.pth",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    assert "openmic" in err and "standardis" in err
    assert_scores(
        by_file_head(parse_csv(out))[("a.wav", "openmic")],
        tag_labels("openmic.txt"),
        expected_probe(ref608["a.wav"], sd, "sigmoid"),
    )


@pytest.mark.parametrize("keys", [("scaler.mean", "scaler.scale"), ("scaler.mean_", "scaler.scale_", "scaler.var_")])
def test_standardisation_stats_under_a_scaler_prefix(ckpts, music_dir, ref608, tiny_probe_dir, capsys, keys):
    """Statistics saved from a feature scaler (`scaler.mean`, `scaler.scale`[, `scaler.var`]).

    (Regression: any key containing "scale" counted as the scale, so `scaler.mean` was refused, and
    with `scaler.var_` present the mean was silently used as the scale.)
    """
    g = torch.Generator().manual_seed(12)
    mean, scale = torch.randn(EMB, generator=g) * 0.3, torch.rand(EMB, generator=g) + 0.5
    sd = probe_tensors(20, seed=12)
    sd[keys[0]], sd[keys[1]] = mean, scale
    if len(keys) == 3:
        sd[keys[2]] = scale**2
    torch.save(sd, tiny_probe_dir / "openmic.pth")
    rc, out, err = cli(
        capsys,
        "tag",
        music_dir / "a.wav",
        "--model",
        ckpts["tiny608"],
        "--head",
        "./openmic.pth",
        "--top-k",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    expected = R.reference_probe_scores(
        ref608["a.wav"],
        sd["probe.weight"].double().numpy(),
        sd["probe.bias"].double().numpy(),
        "sigmoid",
        mean.double().numpy(),
        scale.double().numpy(),
    )
    assert_scores(by_file_head(parse_csv(out))[("a.wav", "openmic")], tag_labels("openmic.txt"), expected)


# ------------------------------------------------------------------------------------ AudioSet head


@pytest.mark.parametrize("name", ["audioset", "events"])
def test_audioset_head_matches_reference(ckpts, music_dir, capsys, name):
    sd = load_sd(ckpts["tiny992_as"])
    rc, out, err = cli(
        capsys, "tag", music_dir, "--model", ckpts["tiny992_as"], "--head", name, "--top-k", "0", "--device", "cpu"
    )
    assert rc == 0, err
    groups = by_file_head(parse_csv(out))
    assert set(groups) == {("a.wav", "audioset"), ("b.flac", "audioset")}
    labels = tag_labels("audioset.txt")
    assert len(labels) == 527
    for p in (music_dir / "a.wav", music_dir / "sub" / "b.flac"):
        rows = groups[(p.name, "audioset")]
        assert len(rows) == 527
        assert_scores(rows, labels, R.reference_audioset_scores(sd, *read_wave(p)))


def test_audioset_head_on_a_model_without_it(ckpts, music_dir, capsys):
    rc, out, err = cli(capsys, "tag", music_dir, "--model", ckpts["tiny608"], "--head", "audioset", "--device", "cpu")
    assert rc == 2
    assert "AudioSet head" in err
    assert out == ""


def test_probe_head_needs_a_matpac_plus_encoder(ckpts, music_dir, capsys):
    """A registry probe on a local checkpoint of unknown family: told how to fix it, nothing fetched."""
    rc, out, err = cli(capsys, "tag", music_dir, "--model", ckpts["tiny608"], "--head", "genre", "--device", "cpu")
    assert rc == 2
    assert "matpac-plus" in err
    assert out == ""


# ------------------------------------------------------------------------------------ label order


def registry_heads() -> dict:
    return tomllib.loads((REPO / "weights" / "registry.toml").read_text(encoding="utf-8"))["heads"]


def test_models_labels_genre_prints_the_label_file_in_order():
    proc = run_matpac(["models", "labels", "genre", "--raw"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines == label_file("mtg_genre.txt")
    assert lines[0] == "genre---60s"
    assert len(lines) == 87
    assert b"not publish" not in proc.stderr and b"unconfirmed" not in proc.stderr


def test_models_labels_gtzan_notes_unconfirmed_order_on_stderr():
    proc = run_matpac(["models", "labels", "gtzan", "--raw"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == label_file("gtzan.txt")
    assert len(proc.stdout.decode().splitlines()) == 10
    err = proc.stderr.decode().lower()
    assert "gtzan" in err and ("not publish" in err or "unconfirmed" in err)


@pytest.mark.parametrize("name", sorted(registry_heads()))
def test_models_labels_count_matches_registry(name, capsys):
    spec = registry_heads()[name]
    rc, out, err = cli(capsys, "models", "labels", name, "--raw")
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == spec["classes"]
    assert lines == label_file(spec["labels"])
    assert len(set(lines)) == len(lines), "duplicate labels"
    unconfirmed = spec.get("order") == "unconfirmed"
    assert (("not publish" in err) or ("unconfirmed" in err)) == unconfirmed
    for alias in spec.get("aliases", []):
        rc, out2, _ = cli(capsys, "models", "labels", alias, "--raw")
        assert rc == 0 and out2 == out


def test_spec_label_orders():
    """Spec section 5: the index orders the heads were trained with."""
    heads = registry_heads()
    for name in ("openmic", "mtg_genre", "mtg_mood", "mtg_instrument", "mtg_top50"):
        labels = label_file(heads[name]["labels"])
        assert labels == sorted(labels), name
    for name in ("gtzan", "nsynth", "us8k"):
        assert heads[name].get("order") == "unconfirmed", name
        labels = label_file(heads[name]["labels"])
        assert labels == sorted(labels), name
    esc = label_file("esc50.txt")
    assert (esc[0], esc[1], esc[49]) == ("dog", "rooster", "hand_saw")
    fsd = label_file("fsd50k.txt")
    assert fsd[:2] == ["Accelerating_and_revving_and_vroom", "Accordion"]
    names, mids = label_file("audioset.txt"), label_file("audioset_mids.txt")
    assert len(names) == len(mids) == len(set(mids)) == 527
    assert mids == sorted(mids)
    pairs = dict(zip(mids, names))
    assert pairs["/m/09x0r"] == "Speech" and pairs["/m/04rlf"] == "Music" and pairs["/m/0bt9lr"] == "Dog"
    assert names[0] != "Speech"


def test_probe_zip_is_verified_and_a_rotten_one_refused(hub, tmp_path):
    """`models download probes`, then `models verify` re-hashes the zip; one byte of rot is caught."""
    serve_probes(hub, "flat")
    env = {"HF_ENDPOINT": hub.url, "MATPAC_RELEASE_URL": hub.url + "/", "HF_HOME": str(tmp_path / "hf_home")}
    assert run_matpac(["models", "download", "probes"], env=env).returncode == 0
    ok = run_matpac(["models", "verify"], env=env)
    assert ok.returncode == 0 and "ok\tprobes\t" in ok.stdout.decode(), ok.stderr
    zpath = tmp_path / "hf_home" / "matpac" / "releases" / "Probes_weights" / "Weights_probes_matpac.zip"
    with open(zpath, "ab") as fh:
        fh.write(b"\0")
    bad = run_matpac(["models", "verify"], env=env)
    assert bad.returncode == 2 and "MISMATCH\tprobes" in bad.stdout.decode()
    refused = run_matpac(["models", "download", "probes"], env=env)
    assert refused.returncode == 2 and b"checksum mismatch" in refused.stderr
