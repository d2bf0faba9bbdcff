"""Classifier heads in tests: the release names, probe tensors served in a zip from the loopback
server, the label files, and the checks of tag rows against the reference scores.

Shared by the tests of `matpac tag`, `models`, `search`, `report`, parquet outputs and the README;
the fixtures that go with them (`music_dir`, `ref608`, `hub`, `ckpts`) are in conftest.py.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import reference as R
import torch
from conftest import REPO

LABELS_DIR = REPO / "weights" / "labels"
EMB = 5 * 128  # clip embedding of the tiny checkpoints

RELEASE_MUSIC = "MATPAC%2B%2B/matpac_plus_music_6s_2048_enconly.pt"
RELEASE_GENERAL = "MATPAC%2B%2B/matpac_plus_6s_2048_enconly.pt"
RELEASE_AS = "MATPAC%2B%2B/matpac_plus_as_48_1_map_enc_and_head.pt"
RELEASE_PROBES = "Probes_weights/Weights_probes_matpac.zip"
MUSIC = "matpac++_music"
GENERAL = "matpac++_general_audio"

# Spec section 5: classes, activation and label file of the heads used here.
SPEC_HEADS = {
    "mtg_genre": (87, "sigmoid", "mtg_genre.txt"),
    "mtg_mood": (56, "sigmoid", "mtg_mood.txt"),
    "mtg_instrument": (40, "sigmoid", "mtg_instrument.txt"),
    "esc50": (50, "softmax", "esc50.txt"),
    "openmic": (20, "sigmoid", "openmic.txt"),
}
DEFAULT_HEADS = ("mtg_genre", "mtg_mood", "mtg_instrument")
COLUMNS = ["path", "head", "label", "score", "rank"]
TAG_COLUMNS = COLUMNS + ["tag_id", "duration_s", "truncated"]  # every tag row; + start_s, end_s with --segments
TOL = 1e-4


def label_file(name: str) -> list[str]:
    return [ln.strip() for ln in (LABELS_DIR / name).read_text(encoding="utf-8").splitlines() if ln.strip()]


def tag_labels(name: str) -> list[str]:
    """The label names tag rows show: the label file's tags without MTG-Jamendo's `genre---`,
    `instrument---`, `mood/theme---` prefixes, underscores as spaces (the full tag is the row's `tag_id`)."""
    return [t.rsplit("---", 1)[-1].replace("_", " ") for t in label_file(name)]


def probe_tensors(classes: int, seed: int, style: str = "probe", width: int = EMB) -> dict:
    """A random probe file's content. Scales give logits of a few units: scores spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, width, generator=g) * (2.0 / width**0.5)
    b = torch.randn(classes, generator=g) * 0.5
    if style == "bare":
        return {"weight": w, "bias": b}
    sd = {"probe.weight": w, "probe.bias": b}
    if style == "stats":  # feature standardisation statistics (spec 5)
        sd["mean"] = torch.randn(width, generator=g) * 0.3
        sd["scale"] = torch.rand(width, generator=g) + 0.5
    return sd


def probe_args(sd: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(weight, bias, mean, scale) as the reference wants them, whatever the key names."""
    w = next(v for k, v in sd.items() if v.ndim == 2).double().numpy()
    b = next(v for k, v in sd.items() if "bias" in k).double().numpy()
    mean = next((v.double().numpy() for k, v in sd.items() if k.endswith("mean")), None)
    scale = next((v.double().numpy() for k, v in sd.items() if k.endswith("scale")), None)
    return w, b, mean, scale


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def entry_name(layout: str, folder: str, task: str) -> str:
    if layout == "flat":
        return f"{folder}/{task}.pth"
    if layout == "nested":
        return f"{folder}/{task}/{task}.pth"
    if layout == "wrapped":  # the whole zip inside one top folder
        return f"Weights_probes_matpac/{folder}/{task}/{task}.pth"
    raise ValueError(layout)


def serve_probes(
    hub,
    layout: str = "nested",
    styles: dict[str, str] | None = None,
    music: tuple[str, ...] = DEFAULT_HEADS + ("openmic",),
    general: tuple[str, ...] = ("esc50", "mtg_genre", "openmic"),
) -> dict:
    """Serve a probe zip with both family folders; return {(folder, task): tensors}.

    Every task present in both folders gets different weights, so a head read from the wrong
    family's folder gives visibly wrong scores.
    """
    styles = styles or {}
    probes: dict[tuple[str, str], dict] = {}
    entries: dict[str, bytes] = {}
    for fi, (folder, tasks) in enumerate(((MUSIC, music), (GENERAL, general))):
        for ti, task in enumerate(tasks):
            sd = probe_tensors(SPEC_HEADS[task][0], seed=100 * fi + ti, style=styles.get(task, "probe"))
            probes[(folder, task)] = sd
            entries[entry_name(layout, folder, task)] = torch_bytes(sd)
    entries["README.txt"] = b"linear probes\n"
    hub.add_release_file(RELEASE_PROBES, zip_bytes(entries))
    return probes


def expected_probe(emb: np.ndarray, sd: dict, activation: str) -> np.ndarray:
    w, b, mean, scale = probe_args(sd)
    return R.reference_probe_scores(emb, w, b, activation, mean, scale)


def parse_csv(text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    assert reader.fieldnames is not None and reader.fieldnames[:5] == COLUMNS, reader.fieldnames
    return rows


def by_file_head(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Clip rows grouped by (file name, head), in output order."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("start_s") not in (None, ""):
            continue
        out[(Path(row["path"]).name, row["head"])].append(row)
    return out


def assert_scores(rows: list[dict], labels: list[str], expected: np.ndarray, all_labels: bool = True) -> None:
    """Every row's score is the reference score of its label; with all_labels, every label once."""
    got = {r["label"]: float(r["score"]) for r in rows}
    assert len(got) == len(rows), "a label appears twice"
    if all_labels:
        assert set(got) == set(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    worst = max(abs(s - expected[index[lab]]) for lab, s in got.items())
    assert worst <= TOL, f"max score error {worst:.3g}"
    ranks = [int(r["rank"]) for r in rows]
    assert ranks == list(range(1, len(rows) + 1))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def serve_music_model(hub, ckpts) -> None:
    """matpac-plus-music = tiny608, as its release file; its Hub repo stays missing."""
    hub.add_release_file(RELEASE_MUSIC, ckpts["tiny608"].read_bytes())


def openmic_probe(tmp_path: Path) -> Path:
    """A local openmic probe (20 classes) for the tiny 640-wide encoder."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "openmic.pth"
    torch.save({"weight": torch.randn(20, 640, generator=g), "bias": torch.randn(20, generator=g)}, path)
    return path
