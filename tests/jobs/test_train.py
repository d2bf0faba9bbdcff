"""`matpac train`: a linear probe of the user's own labels, and `matpac tag --head HEAD.safetensors`.

Synthetic classes a linear probe must separate on the tiny (width 128, depth 2, 640-d) encoder:
low tones (150-300 Hz), high tones (1.5-3 kHz) and white noise, 1 s each at 16 kHz. Single-label
as class folders; multi-label as a CSV whose files hold one or two of the three sounds. Held-out
files are never trained on. Every audio file is embedded once per module (`corpus`), so most
tests train from `--embeddings` in a second or two; one test runs the real `matpac` programs.
Numbers are checked against numpy written here (AP, scaler, scores), not against the trainer.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli, run_matpac

SR = 16000
CLASSES = ["high", "low", "noise"]  # sorted, as the head orders them
COMBOS = [("low",), ("high",), ("noise",), ("low", "noise"), ("high", "noise"), ("high", "low")]
FAST = ["--lr", "1e-3"]  # one learning rate where the grid is not what a test is about


def clip(labels: tuple[str, ...], rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = 0.003 * rng.standard_normal(len(t))
    if "low" in labels:
        x += 0.3 * np.sin(2 * np.pi * rng.uniform(150, 300) * t)
    if "high" in labels:
        x += 0.3 * np.sin(2 * np.pi * rng.uniform(1500, 3000) * t)
    if "noise" in labels:
        x += (0.2 if len(labels) == 1 else 0.1) * rng.standard_normal(len(t))
    return x.astype(np.float32)


def write(path: Path, x: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SR)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ckpts) -> dict:
    """labelled/<class>/*.wav (8 per class), heldout/ (6 per class), multi/ + multi.csv (5 per
    combination), multi_heldout/ (4 per combination); one emb.npy of all of them."""
    from matpac_cli.inference.predictor import Predictor
    from matpac_cli.jobs.embed import EmbedConfig, embed
    from matpac_cli.pipeline.discovery import discover

    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    heldout, multi_rows, multi_heldout = {}, [], {}
    for c in CLASSES:
        for i in range(8):
            write(root / "labelled" / c / f"{c}{i}.wav", clip((c,), rng))
        for i in range(6):
            heldout[write(root / "heldout" / f"{c}_{i}.wav", clip((c,), rng))] = c
    for j, combo in enumerate(COMBOS):
        for i in range(5):
            write(root / "multi" / f"m{j}_{i}.wav", clip(combo, rng))
            multi_rows += [(f"multi/m{j}_{i}.wav", label) for label in combo]
        for i in range(4):
            multi_heldout[write(root / "multi_heldout" / f"m{j}_{i}.wav", clip(combo, rng))] = combo
    with open(root / "multi.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *multi_rows])
    predictor = Predictor.load(str(ckpts["tiny608"]), "cpu")
    items = discover([str(root / d) for d in ("labelled", "heldout", "multi", "multi_heldout")])
    embed(items, predictor, EmbedConfig(out=root / "emb.npy"))
    return {
        "root": root,
        "emb": root / "emb.npy",
        "heldout": heldout,
        "multi_heldout": multi_heldout,
        "model": ckpts["tiny608"],
    }


def rows_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def index_vectors(corpus: dict, names) -> np.ndarray:
    from matpac_cli.outputs.readers import read_embeddings

    emb = read_embeddings(corpus["emb"])
    where = {p: i for i, p in enumerate(emb.paths)}
    return np.asarray(emb.matrix[[where[n] for n in names]], dtype=np.float64)


def numpy_scores(head: Path, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """What a head file means, read with safetensors and computed in plain numpy."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    t = {k: v.astype(np.float64) for k, v in load_file(str(head)).items()}
    with safe_open(str(head), framework="numpy") as fh:
        meta = fh.metadata()
    logits = ((x - t["mean"]) / t["scale"]) @ t["probe.weight"].T + t["probe.bias"]
    if meta["activation"] == "softmax":
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True), meta
    return 1 / (1 + np.exp(-logits)), meta


def labelled_features(corpus: dict, source: Path, task: str = "auto"):
    from matpac_cli.jobs.train_data import from_index, read_labels

    return from_index(read_labels(source, task), corpus["emb"])


def brute_ap(truth: np.ndarray, score: np.ndarray) -> float:
    """AP by its definition: the mean, over positives, of the precision among every file scoring
    at least as high (tied scores count as one threshold)."""
    pos = np.flatnonzero(truth > 0)
    return float(np.mean([(truth[score >= score[i]] > 0).mean() for i in pos]))


# ------------------------------------------------------------------------------ end to end


def test_train_then_tag_labels_heldout_files_with_the_real_programs(corpus, tmp_path):
    root = corpus["root"]
    head = tmp_path / "mine.safetensors"
    proc = run_matpac(["train", root / "labelled", "--out", head, "--model", corpus["model"]], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "validation accuracy" in err and "chosen lr" in err and "confusion matrix" in err
    report = json.loads((tmp_path / "mine.report.json").read_text())
    assert [(c["name"], c["files"]) for c in report["classes"]] == [(c, 8) for c in CLASSES]
    assert report["chosen"]["lr"] in (1e-4, 3e-4, 1e-3, 3e-3) and report["metric"]["name"] == "accuracy"
    assert (tmp_path / "mine.emb.npy").exists()  # the embeddings are kept, for a re-run or --embeddings
    proc = run_matpac(["tag", root / "heldout", "--head", "./mine.safetensors", "--top-k", "1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode())))
    assert len(rows) == len(corpus["heldout"])
    assert all(r["label"] == corpus["heldout"][r["path"]] and r["head"] == "mine" for r in rows)


def test_heldout_accuracy_and_map_beat_a_bound_that_shuffled_labels_do_not(corpus):
    """Real labels: held-out accuracy >= 0.9 and mAP >= 0.85. Control: the same files with labels
    that carry no information (within each true class the labels cycle through all classes)."""
    from matpac_cli.inference.heads import Head
    from matpac_cli.jobs.probe import TrainConfig
    from matpac_cli.jobs.train import train

    def heldout_figure(features, truth_of, task):
        result = train(features, TrainConfig(seed=0, lrs=(1e-3,)))
        names = list(truth_of)
        p = Head.from_trained(result.head).scores(index_vectors(corpus, names))
        if task == "single":
            return float(np.mean([CLASSES[k] == truth_of[n] for n, k in zip(names, p.argmax(1))]))
        y = np.array([[c in truth_of[n] for c in CLASSES] for n in names], dtype=float)
        return float(np.mean([brute_ap(y[:, k], p[:, k]) for k in range(3)]))

    def uninformative(features):
        """The k-th file of every true label set gets label set k (cycling): every true class then
        has the same mix of labels, so the labels say nothing about the sound."""
        labels = features.labelled.labels
        order = sorted({tuple(ls) for ls in labels})
        seen: dict[tuple, int] = {}
        for i, ls in enumerate(labels):
            k = seen[tuple(ls)] = seen.get(tuple(ls), -1) + 1
            labels[i] = list(order[k % len(order)])
        return features

    single = labelled_features(corpus, corpus["root"] / "labelled")
    multi = labelled_features(corpus, corpus["root"] / "multi.csv")
    assert heldout_figure(single, corpus["heldout"], "single") >= 0.9
    assert heldout_figure(multi, corpus["multi_heldout"], "multi") >= 0.85
    shuffled_single = heldout_figure(
        uninformative(labelled_features(corpus, corpus["root"] / "labelled")), corpus["heldout"], "single"
    )
    shuffled_multi = heldout_figure(
        uninformative(labelled_features(corpus, corpus["root"] / "multi.csv")), corpus["multi_heldout"], "multi"
    )
    assert shuffled_single < 0.7 and shuffled_multi < 0.75, (shuffled_single, shuffled_multi)


def test_csv_multilabel_head_through_tag_matches_numpy(corpus, tmp_path, capsys):
    head = tmp_path / "multi.safetensors"
    rc, _, err = cli(capsys, "train", corpus["root"] / "multi.csv", "--out", head, "--embeddings", corpus["emb"])
    assert rc == 0, err
    assert "multi-label" in err and "per-class AP" in err
    report = json.loads(head.with_suffix(".report.json").read_text())
    assert report["task"] == "multi" and report["activation"] == "sigmoid" and report["metric"]["name"] == "mAP"
    assert [c["name"] for c in report["per_class_ap"]] == CLASSES
    assert [(c["name"], c["files"]) for c in report["classes"]] == [("high", 15), ("low", 15), ("noise", 15)]
    names = sorted(corpus["multi_heldout"])
    rc, out, err = cli(capsys, "tag", *names, "--head", head, "--top-k", "0", "--format", "jsonl")
    assert rc == 0, err
    expected, meta = numpy_scores(head, index_vectors(corpus, names))
    assert json.loads(meta["classes"]) == CLASSES and meta["task"] == "multi"
    got = {(r["path"], r["label"]): r["score"] for r in rows_of(out)}
    assert len(got) == len(names) * 3
    for i, n in enumerate(names):
        for k, c in enumerate(CLASSES):
            assert got[(n, c)] == pytest.approx(expected[i, k], abs=1e-6)


def test_tag_gives_the_trainers_own_scores_and_applies_the_scaler_once(corpus, tmp_path, capsys):
    from matpac_cli.jobs.probe import TrainConfig
    from matpac_cli.jobs.train import train

    head = tmp_path / "h.safetensors"
    result = train(labelled_features(corpus, corpus["root"] / "labelled"), TrainConfig(val=0.25, lrs=(1e-3,)), head)
    assert len(result.val_names) == 6
    rc, out, err = cli(capsys, "tag", *result.val_names, "--head", head, "--top-k", "0", "--format", "jsonl")
    assert rc == 0, err
    got = {(r["path"], r["label"]): r["score"] for r in rows_of(out)}
    tagged = np.array([[got[(n, c)] for c in CLASSES] for n in result.val_names])
    np.testing.assert_allclose(tagged, result.probe.val_scores, atol=1e-6)
    x = index_vectors(corpus, result.val_names)
    once, _ = numpy_scores(head, x)
    np.testing.assert_allclose(tagged, once, atol=1e-9)
    from safetensors.numpy import load_file

    t = {k: v.astype(np.float64) for k, v in load_file(str(head)).items()}
    z = (x - t["mean"]) / t["scale"]
    twice = ((z - t["mean"]) / t["scale"]) @ t["probe.weight"].T + t["probe.bias"]
    log_twice = twice - twice.max(1, keepdims=True)
    log_twice -= np.log(np.exp(log_twice).sum(1, keepdims=True))
    assert np.abs(log_twice - np.log(tagged)).max() > 0.5  # scaling twice would not pass the check above


def test_same_seed_same_head_other_seed_other_head(corpus, tmp_path, capsys):
    from safetensors.numpy import load_file

    args = ["train", corpus["root"] / "labelled", "--embeddings", corpus["emb"], "--lr", "1e-3,3e-3"]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        rc, _, err = cli(capsys, *args, "--out", tmp_path / f"{name}.safetensors", "--seed", seed)
        assert rc == 0, err
    a, b, c = (load_file(str(tmp_path / f"{n}.safetensors")) for n in "abc")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["probe.weight"], c["probe.weight"])


def test_folds_report_and_head_on_every_file(corpus, tmp_path, capsys):
    head = tmp_path / "f.safetensors"
    rc, _, err = cli(
        capsys, "train", corpus["root"] / "labelled", "--out", head, "--embeddings", corpus["emb"], "--folds", 4, *FAST
    )
    assert rc == 0, err
    assert "4-fold cross-validation" in err
    report = json.loads(head.with_suffix(".report.json").read_text())
    folds = report["validation"]["per_fold"]
    assert len(folds) == 4 and sum(f["n_val"] for f in folds) == 24 and all(f["n_train"] == 18 for f in folds)
    cm = np.array(report["confusion_matrix"]["counts"])
    assert cm.sum() == 24 and (cm.sum(1) == 8).all()  # out-of-fold: every file predicted once
    # one definition: the accuracy of the confusion matrix printed beside it (pooled out-of-fold)
    assert report["metric"]["value"] == pytest.approx(np.trace(cm) / cm.sum())
    assert "out-of-fold scores of all 24 files pooled" in err


def test_folds_map_is_the_mean_of_the_per_class_aps_it_prints(corpus, tmp_path, capsys):
    """`--folds` once printed the mean of the folds' own mAPs beside per-class APs (pooled
    out-of-fold) that averaged to another figure; the headline is now their mean, and says so."""
    head = tmp_path / "m.safetensors"
    rc, _, err = cli(
        capsys,
        "train",
        corpus["root"] / "multi.csv",
        "--out",
        head,
        "--embeddings",
        corpus["emb"],
        "--folds",
        5,
        "--seed",
        3,
        *FAST,
    )
    assert rc == 0, err
    report = json.loads(head.with_suffix(".report.json").read_text())
    aps = [c["ap"] for c in report["per_class_ap"]]
    assert report["metric"]["value"] == pytest.approx(np.mean(aps)), report["metric"]
    assert report["metric"]["definition"].startswith("macro: the mean of the 3 per-class APs")
    shown = f"validation macro mAP (the mean of the 3 per-class APs) {np.mean(aps):.3f} on 5-fold"
    assert shown in err, err
    assert report["search"][0]["metric"] == pytest.approx(report["metric"]["value"])  # what the rate was chosen on


# ------------------------------------------------------------------------------ the parts, against numpy


def test_scaler_ap_and_split_against_numpy():
    from matpac_cli.jobs.probe import fit_scaler
    from matpac_cli.jobs.probe_eval import average_precision, stratified_split

    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, (50, 7)).astype(np.float32)
    x[:, 2] = 5.0  # a constant feature: scale 1, not a division by zero
    mean, scale = fit_scaler(x)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
    expect = x.astype(np.float64).std(0)
    expect[2] = 1.0
    np.testing.assert_allclose(scale, expect, rtol=1e-6)
    for ties in (False, True):
        truth = rng.integers(0, 2, 40)
        score = rng.random(40) if not ties else rng.integers(0, 4, 40).astype(float)
        assert average_precision(truth, score) == pytest.approx(brute_ap(truth, score))
    groups = np.repeat([0, 1, 2], [30, 20, 10])
    split = stratified_split(groups, 0.1, seed=0)
    assert sorted(np.bincount(groups[split.val]).tolist()) == [1, 2, 3]
    assert set(split.train) | set(split.val) == set(range(60)) and not set(split.train) & set(split.val)


def test_class_missing_from_validation_is_a_warning(corpus, tmp_path, capsys):
    csv_path = tmp_path / "few.csv"
    names = [f"labelled/{c}/{c}{i}.wav" for c in ("high", "low") for i in range(8)] + [
        "labelled/noise/noise0.wav",
        "labelled/noise/noise1.wav",
    ]
    csv_path.write_text("path,label\n" + "".join(f"{corpus['root'] / n},{n.split('/')[1]}\n" for n in names))
    rc, _, err = cli(
        capsys, "train", csv_path, "--out", tmp_path / "few.safetensors", "--embeddings", corpus["emb"], *FAST
    )
    assert rc == 0, err
    assert "warning: 1 class(es) missing from the validation split: noise" in err
    assert "warning: only 2 validation file(s) (3 class(es) with fewer than 2): " in err and "--folds 5" in err
    report = json.loads((tmp_path / "few.report.json").read_text())
    assert report["classes"][2] == {"name": "noise", "files": 2, "validation_files": 0}


def test_a_small_validation_split_is_a_warning_that_suggests_folds(corpus, tmp_path, capsys):
    """24 files hold out 2 or 3 (--val 0.1): a warning; --val 0.5 holds out 12 (4 a class): none;
    --folds validates on every file: none."""
    folder = corpus["root"] / "labelled"
    rc, _, err = cli(capsys, "train", folder, "--out", tmp_path / "a.safetensors", "--embeddings", corpus["emb"], *FAST)
    assert rc == 0 and "matpac: warning: only 2 validation file(s) (3 class(es) with fewer than 2)" in err, err
    assert "--folds 5 validates on every file" in err
    for extra in (["--val", "0.5"], ["--folds", "3"]):
        rc, _, err = cli(
            capsys,
            "train",
            folder,
            "--out",
            tmp_path / "b.safetensors",
            "--embeddings",
            corpus["emb"],
            "--force",
            *extra,
            *FAST,
        )
        assert rc == 0 and "validation file(s)" not in err, err


# ------------------------------------------------------------------------------ inputs and refusals


def test_embeddings_are_matched_by_real_path(corpus, tmp_path, capsys):
    """A CSV naming the files through a symlinked folder, with paths relative to the CSV."""
    (tmp_path / "data").mkdir()
    os.symlink(corpus["root"] / "labelled", tmp_path / "data" / "link")
    rows = [f"link/{c}/{c}{i}.wav,{c}" for c in CLASSES for i in range(8)]
    (tmp_path / "data" / "l.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    rc, _, err = cli(
        capsys,
        "train",
        tmp_path / "data" / "l.csv",
        "--out",
        tmp_path / "l.safetensors",
        "--embeddings",
        corpus["emb"],
        *FAST,
    )
    assert rc == 0, err
    assert json.loads((tmp_path / "l.report.json").read_text())["files"] == 24


@pytest.mark.parametrize(
    "case",
    ["one_example", "single_but_two_labels", "not_in_index", "deleted", "bad_out", "exists", "no_labels", "bad_header"],
)
def test_refusals_are_one_line_exit_2(corpus, tmp_path, capsys, case):
    root, emb = corpus["root"], corpus["emb"]
    labels, out, extra = tmp_path / "l.csv", tmp_path / "h.safetensors", []
    good = "".join(f"{root}/labelled/{c}/{c}{i}.wav,{c}\n" for c in CLASSES for i in range(3))
    text = "path,label\n" + good
    expect = ""
    if case == "one_example":
        text += f"{root}/labelled/low/low7.wav,lonely\n"
        expect = "classes with fewer than 2 files: lonely (1)"
    elif case == "single_but_two_labels":
        text += f"{root}/labelled/low/low0.wav,high\n"
        extra, expect = ["--task", "single"], "has 2 labels (high, low) but --task single"
    elif case == "not_in_index":
        for name in "ab":
            write(tmp_path / "new" / f"{name}.wav", clip(("low",), np.random.default_rng(5)))
        text += f"{tmp_path}/new/a.wav,low\n{tmp_path}/new/b.wav,low\n"
        expect = "2 of 11 labelled files are not in its index"
    elif case == "deleted":  # not "embed them too": they do not exist
        text += f"{root}/nowhere/a.wav,low\n{root}/nowhere/b.wav,low\n"
        expect = f"2 labelled file(s) do not exist ({root}/nowhere/a.wav, {root}/nowhere/b.wav) and are not in"
    elif case == "bad_out":
        out, expect = tmp_path / "h.pt", "a trained head is written as .safetensors"
    elif case == "exists":
        out.write_bytes(b"x")
        expect = "exists; use --force to replace it"
    elif case == "no_labels":
        labels, expect = tmp_path / "missing", "no such labels folder or CSV"
    elif case == "bad_header":
        text, expect = "file,class\na.wav,x\n", "expected a header with columns path,label"
    if case != "no_labels":
        labels.write_text(text)
    rc, out_text, err = cli(capsys, "train", labels, "--out", out, "--embeddings", emb, *extra)
    assert rc == 2 and out_text == ""
    assert err.startswith("matpac: error: ") and err.count("\n") == 1 and expect in err, err


def test_head_on_another_encoder_is_refused_naming_both(corpus, tmp_path, capsys, ckpts):
    head = tmp_path / "h.safetensors"
    rc, _, err = cli(capsys, "train", corpus["root"] / "labelled", "--out", head, "--embeddings", corpus["emb"], *FAST)
    assert rc == 0, err
    one = sorted(corpus["heldout"])[0]
    rc, out, err = cli(capsys, "tag", one, "--head", head, "--model", ckpts["tiny992_as"])
    assert rc == 2 and out == ""
    assert "was trained on encoder" in err and str(corpus["model"]) in err and "tiny992_as.pt" in err


def test_head_of_a_registry_encoder_is_refused_on_another_before_any_download(tmp_path, capsys):
    from matpac_cli.checkpoints.trained_head import TrainedHead, to_bytes

    dim = 640
    head = TrainedHead(
        np.zeros((2, dim), np.float32),
        np.zeros(2, np.float32),
        np.zeros(dim, np.float32),
        np.ones(dim, np.float32),
        ["a", "b"],
        "single",
        {"name": "matpac-plus", "source": "hub:x", "sha256": "0" * 64},
    )
    path = tmp_path / "reg.safetensors"
    path.write_bytes(to_bytes(head))
    (tmp_path / "x.wav").write_bytes(b"")
    rc, out, err = cli(capsys, "tag", tmp_path / "x.wav", "--head", path, "--model", "matpac-plus-music")
    assert rc == 2 and out == ""
    assert "trained on encoder matpac-plus (sha256 000000000000), but this run uses matpac-plus-music" in err


def test_a_broken_file_is_skipped_and_the_head_still_written(corpus, tmp_path, capsys):
    """Computing embeddings goes through the embedding pipeline: a bad file is named, the run
    goes on, exit 1; a re-run reuses the embeddings the library kept."""
    import shutil

    folder = tmp_path / "lab"
    for c in CLASSES:
        shutil.copytree(corpus["root"] / "labelled" / c, folder / c)
    (folder / "low" / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    (folder / "stray.wav").write_bytes((folder / "low" / "low0.wav").read_bytes())
    head = tmp_path / "h.safetensors"
    rc, _, err = cli(capsys, "train", folder, "--out", head, "--model", corpus["model"], *FAST)
    assert rc == 1, err
    assert "broken.wav" in err and "1 failed" in err
    assert "1 audio file(s) directly in the folder" in err
    assert json.loads(head.with_suffix(".report.json").read_text())["files"] == 24
    rc, _, err = cli(
        capsys,
        "train",
        folder,
        "--out",
        tmp_path / "again.safetensors",
        "--model",
        corpus["model"],
        "--embeddings-out",
        head.with_suffix(".emb.npy"),
        *FAST,
    )
    assert rc == 1 and "24 reused" in err
