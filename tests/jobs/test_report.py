"""`matpac report` and `matpac tag --report`: the page of a real (tiny-model) run, checked against
the rows it was made from, and opened in headless Chromium.

One module-wide run: `matpac tag --segments --report` and `matpac embed` over four generated
files, one with a hostile name. Expected numbers come from the CSV and the matrix with numpy,
never from the report code. Browser tests skip without a chromium binary, and fail instead when
MATPAC_REQUIRE_BROWSER=1 (CI sets it).
"""

from __future__ import annotations

import base64
import csv
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_matpac, write_audio
from probes import EMB, probe_tensors

from matpac_cli.cli import main

FILES = {"music/a.wav": 3.0, "music/b.wav": 8.0, "music/sub/c d.flac": 14.0, 'music/<!--b>&"x.wav': 2.0}
HEADS = ("mtg_genre", "mtg_mood")


@pytest.fixture(scope="module")
def run(ckpts, tmp_path_factory):
    """tags.csv (with segments) + report.html from `tag --report`, and emb.npy, in one folder."""
    d = tmp_path_factory.mktemp("report_run")
    for n, (name, seconds) in enumerate(FILES.items()):
        write_audio(d / name, seconds, seed=n)
    torch.save(probe_tensors(87, seed=1, width=EMB), d / "mtg_genre.pth")
    torch.save(probe_tensors(56, seed=2, width=EMB), d / "mtg_mood.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        common = ["music", "--model", str(ckpts["tiny608"]), "--device", "cpu", "-q"]
        assert (
            main(
                [
                    "tag",
                    *common,
                    "--head",
                    "./mtg_genre.pth",
                    "--head",
                    "./mtg_mood.pth",
                    "--segments",
                    "--out",
                    "tags.csv",
                    "--report",
                    "tagged.html",
                ]
            )
            == 0
        )
        assert main(["embed", *common, "--out", "emb.npy"]) == 0
    return d


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def page_data(html: str) -> dict:
    data = json.loads(
        re.search(r'<script type="application/json" id="matpac-data">(.*?)</script>', html, re.S).group(1)
    )
    blob = re.search(r'id="matpac-timelines">(.*?)</script>', html, re.S).group(1).strip()
    data["timelines"] = json.loads(gzip.decompress(base64.b64decode(blob))) if blob else None
    return data


@pytest.fixture(scope="module")
def report(run) -> Path:
    """The real command, in a subprocess, as a user runs it."""
    proc = run_matpac(
        ["report", "tags.csv", "--embeddings", "emb.npy", "--out", "out/report.html", "--audio"], cwd=run, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert re.fullmatch(
        r"matpac: report of 4 file\(s\) in [\d.]+ s; wrote out/report.html \(\d+ KB\)\n", proc.stderr.decode()
    )
    return run / "out" / "report.html"


# ---------------------------------------------------------------- the page's content against the rows


def test_label_counts_are_those_of_the_clip_rows(run, report):
    clip = [r for r in rows(run / "tags.csv") if r["start_s"] == ""]
    html = report.read_text()
    for head in HEADS:
        top1 = Counter(r["label"] for r in clip if r["head"] == head and r["rank"] == "1")
        kept = Counter(r["label"] for r in clip if r["head"] == head)
        drawn = re.findall(
            r"<title>([^<]+): top-1 of (\d+) file\(s\), in top 5 in (\d+)</title>",
            html.split(f"<figcaption>{head}:")[1].split("</figure>")[0],
        )
        expected = sorted(kept, key=lambda label: (-kept[label], -top1[label], label))[:20]
        assert [label for label, _, _ in drawn] == expected
        assert all(int(t) == top1[label] and int(k) == kept[label] for label, t, k in drawn)
    assert '<div class="fact"><b>4</b>files</div>' in html
    hours = sum(FILES.values()) / 3600
    assert f"<b>{hours:.2f}</b>hours of audio" in html  # durations from the embedding index
    assert "tiny608.pt" in html and "mtg_genre.pth" in html and "87" in html  # models and heads, from the manifest


def test_table_and_timelines_hold_the_rows(run, report):
    data = page_data(report.read_text())
    all_rows = rows(run / "tags.csv")
    assert data["paths"] == list(dict.fromkeys(r["path"] for r in all_rows))
    assert set(data["paths"]) == set(FILES)
    index = {r["path"]: float(r["duration_s"]) for r in rows(run / "emb.csv")}
    assert data["dur"] == [round(index[p], 1) for p in data["paths"]]
    for i, path in enumerate(data["paths"]):
        for h, head in enumerate(HEADS):
            labels = data["heads"][h]["labels"]
            mine = [r for r in all_rows if r["path"] == path and r["head"] == head]
            clip = sorted((r for r in mine if r["start_s"] == ""), key=lambda r: int(r["rank"]))[:3]
            top = data["top"][i][h]
            assert [labels[j] for j in top[::2]] == [r["label"] for r in clip]
            assert np.allclose(top[1::2], [float(r["score"]) for r in clip], atol=1e-3)
            _check_timeline(data["timelines"][i][h], labels, [r for r in mine if r["start_s"] != ""])


def _check_timeline(rec: dict, labels: list[str], seg_rows: list[dict]) -> None:
    starts = sorted({float(r["start_s"]) for r in seg_rows})
    assert rec["n"] == len(starts) and rec["t0"] == starts[0]
    assert len(starts) == 1 or np.isclose(rec["dt"], 6.08)  # matpac's 608-frame hop
    assert np.isclose(rec["end"], max(float(r["end_s"]) for r in seg_rows))
    scores = defaultdict(lambda: np.zeros(len(starts)))
    for r in seg_rows:
        scores[r["label"]][starts.index(float(r["start_s"]))] = float(r["score"])
    means = {label: s.mean() for label, s in scores.items()}
    expected = sorted(means, key=lambda label: -means[label])[:8]
    shown = [labels[j] for j in rec["l"]]
    assert sorted(shown) == sorted(expected) and [means[x] for x in shown] == sorted(means[x] for x in shown)[::-1]
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    kept = {(r["label"], float(r["start_s"])): float(r["score"]) for r in seg_rows}
    for row, label in enumerate(shown):
        for col, start in enumerate(starts):
            char = rec["q"][row * len(starts) + col]
            score = kept.get((label, start))
            assert char == ("." if score is None else alphabet[round(score * 61)])


def test_map_is_the_pca_and_neighbours_the_cosine_of_the_embeddings(run, report):
    html = report.read_text()
    data = page_data(html)
    X = np.load(run / "emb.npy").astype(np.float64)
    emb_paths = [r["path"] for r in rows(run / "emb.csv")]
    order = [emb_paths.index(p) for p in data["paths"]]
    X = X[order]
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    for i, flat in enumerate(data["nn"]):
        expected = np.argsort(-cos[i], kind="stable")[:3]  # 4 files: 3 others
        assert flat[::2] == expected.tolist()
        assert np.allclose(np.array(flat[1::2]) / 1000, cos[i, expected], atol=1e-3)
    centred = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s[:2] ** 2 / (s**2).sum()
    assert f"PC1 ({share[0]:.0%} of the variance)" in html and f"PC2 ({share[1]:.0%} of the variance)" in html
    points = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="3.5" class="[^"]*" data-i="(\d+)">', html)
    assert sorted(int(i) for _, _, i in points) == [0, 1, 2, 3]
    xy = np.array([[float(x), float(y)] for x, y, _ in points])[np.argsort([int(i) for _, _, i in points])]
    ref = centred @ vt[:2].T
    for k, flip in ((0, 1), (1, -1)):  # SVG y grows downwards
        r = np.corrcoef(xy[:, k] * flip, ref[:, k])[0, 1]
        assert abs(r) > 0.999


def test_pca_of_a_large_matrix_matches_numpy_svd():
    from matpac_cli.jobs.report.mapping import pca2

    rng = np.random.default_rng(3)
    X = (rng.standard_normal((3000, 6)) * [9, 5, 2, 1, 1, 1]) @ rng.standard_normal((6, 300))
    X = (X + 0.3 * rng.standard_normal(X.shape) + 4).astype(np.float32)
    sel = np.arange(0, 3000, 2)  # a subset of the rows, in blocks
    xy, shares = pca2(X, sel)
    c = X[sel].astype(np.float64) - X[sel].mean(axis=0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    ref = c @ vt[:2].T
    for k in range(2):
        assert np.allclose(np.abs(xy[:, k]), np.abs(ref[:, k]), rtol=1e-3, atol=1e-2 * np.abs(ref[:, k]).max())
    assert np.allclose(shares, s[:2] ** 2 / (s**2).sum(), rtol=1e-4)


def test_tag_report_shortcut_writes_the_same_page(run, report):
    tagged = page_data((run / "tagged.html").read_text())
    full = page_data(report.read_text())
    assert (
        tagged["paths"] == full["paths"] and tagged["timelines"] == full["timelines"] and tagged["top"] == full["top"]
    )
    assert tagged["nn"] is None and tagged["audio"] is None
    ends = {p: max(float(r["end_s"]) for r in rows(run / "tags.csv") if r["path"] == p and r["end_s"]) for p in FILES}
    assert tagged["dur"] == [round(ends[p], 1) for p in tagged["paths"]]  # no embeddings: the segment ends


def test_jsonl_input_gives_the_same_page(run, tmp_path):
    from matpac_cli.outputs.tag_readers import read_tags, scan_tags
    from matpac_cli.outputs.writers import RowWriter

    src = read_tags(run / "tags.csv")
    out = tmp_path / "tags.ndjson"
    with open(out, "w") as fh:
        w = RowWriter(fh, "jsonl", list(src.rows[0]))
        for r in src.rows:
            w.write(r)
    assert list(scan_tags(out).rows()) == list(scan_tags(run / "tags.csv").rows()) == src.rows
    assert read_tags(out).rows == src.rows
    assert main(["report", str(out), "--out", str(tmp_path / "j.html"), "-q"]) == 0
    a, b = page_data((tmp_path / "j.html").read_text()), page_data((run / "tagged.html").read_text())
    assert a["paths"] == b["paths"] and a["timelines"] == b["timelines"] and a["top"] == b["top"]


def test_page_is_self_contained(report):
    html = report.read_text()
    refs = re.findall(r"""(?:src|href|action|data)\s*=\s*["']?([^"'\s>]+)|url\(([^)]*)\)|@import""", html)
    external = [a or b for a, b in refs if re.match(r"(?i)(https?:|//|ftp:)", a or b)]
    assert external == []
    urls = set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace name, never fetched
    assert report.stat().st_size < 200_000
    # the hostile name is escaped everywhere: no stray comment or tag opened by it
    assert "<!--b>" not in html and "music/&lt;!--b&gt;&amp;&quot;x.wav" in html


def test_audio_sources_are_relative_to_the_page(run, report):
    from urllib.parse import unquote

    data = page_data(report.read_text())
    for path, src in zip(data["paths"], data["audio"]):
        assert not src.startswith("/") and (report.parent / unquote(src)).resolve() == (run / path).resolve()


def test_readme_report_line_works_as_written(run):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## See your library") :]
    block = section[section.index("```bash\n") + 8 :]
    lines = block[: block.index("```")].splitlines()
    assert lines[0].startswith("matpac tag ./music --segments --out tags.csv --report report.html")
    words = shlex.split(next(ln for ln in lines if ln.startswith("matpac report ")), comments=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        assert main(words[1:]) == 0
    data = page_data((run / "report.html").read_text())
    assert data["audio"] and data["nn"] and data["timelines"] and sorted(data["paths"]) == sorted(FILES)


# ---------------------------------------------------------------- bad inputs: one line, exit 2


@pytest.mark.parametrize("case", ["not_tags", "other_files", "parquet", "txt_out", "existing", "split_rows"])
def test_bad_inputs_are_one_line_and_exit_2(run, tmp_path, capsys, case):
    args = {
        "not_tags": ["emb.csv"],
        "other_files": ["tags.csv", "--embeddings", str(tmp_path / "o.npy")],
        "parquet": ["tags.csv", "--embeddings", str(tmp_path / "emb.parquet")],
        "txt_out": ["tags.csv"],
        "existing": ["tags.csv"],
        "split_rows": [str(tmp_path / "split.csv")],
    }[case]
    out = tmp_path / ("r.txt" if case == "txt_out" else "r.html")
    if case == "other_files":
        np.save(tmp_path / "o.npy", np.ones((1, 4), dtype=np.float32))
        (tmp_path / "o.csv").write_text(
            "row,path,duration_s,sample_rate,channels,truncated\n0,elsewhere/z.wav,1,16000,1,0\n"
        )
    if case == "existing":
        out.write_text("<html>my notes</html>")
    if case == "parquet":
        (tmp_path / "emb.parquet").write_bytes(b"PAR1 and no table")
    if case == "split_rows":
        lines = (run / "tags.csv").read_text().splitlines()
        first = next(csv.reader([lines[1]]))[0]
        (tmp_path / "split.csv").write_text("\n".join(lines + [lines[1]]) + "\n")
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        code = main(["report", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("matpac: error: ") and err.count("\n") == 1, err
    expected = {
        "not_tags": "emb.csv: not a matpac tags file",
        "other_files": "these embeddings are of other files",
        "parquet": "emb.parquet: not a readable Parquet file",
        "txt_out": "a report is an .html file",
        "existing": "exists and is not a matpac report; use --force",
        "split_rows": "are not together",
    }[case]
    assert expected in err
    if case == "existing":
        assert out.read_text() == "<html>my notes</html>"
    if case == "split_rows":
        assert first in err


def test_a_report_replaces_its_own_page_and_notes_partial_embeddings(run, tmp_path, capsys):
    X = np.load(run / "emb.npy")
    np.save(tmp_path / "part.npy", X[:2])
    lines = (run / "emb.csv").read_text().splitlines()
    (tmp_path / "part.csv").write_text("\n".join(lines[:3] + ["2,music/elsewhere.wav,1,16000,1,0"]) + "\n")
    np.save(tmp_path / "part.npy", np.vstack([X[:2], X[:1]]))
    out = tmp_path / "r.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        for _ in range(2):  # the second run replaces the page the first wrote
            capsys.readouterr()
            assert (
                main(["report", "tags.csv", "--embeddings", str(tmp_path / "part.npy"), "--out", str(out), "-q"]) == 0
            )
    html = out.read_text()
    assert "2 tagged file(s) are not in part.npy: they are not on the map." in html
    err = capsys.readouterr().err  # not only in the page: on stderr, even with -q
    assert "matpac: warning: 2 tagged file(s) are not in part.npy: they are not on the map." in err, err
    assert "matpac: warning: 1 file(s) of part.npy are not in the tags" in err, err
    assert "1 file(s) of part.npy are not in the tags" in html
    assert len(re.findall(r"<circle ", html)) == 2


def test_files_with_no_label_kept_and_failed_files_are_counted_apart(run, ckpts, tmp_path):
    """`--threshold` between the files' top scores: the files below it keep a rank-0 row per head
    (no label, score, tag_id), so the report counts all four tagged files; a broken file has no
    row and is named in the page and on stderr; every row carries its file's duration_s, which
    gives the page its durations without embeddings or segments."""
    from matpac_cli.outputs.tag_readers import read_tags

    top1 = sorted(
        float(r["score"])
        for r in rows(run / "tags.csv")
        if r["head"] == "mtg_genre" and r["rank"] == "1" and r["start_s"] == ""
    )
    threshold = round((top1[0] + top1[-1]) / 2, 6)
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    heads = ["--head", "./mtg_genre.pth", "--head", "./mtg_mood.pth", "--threshold", str(threshold)]
    outs = {}
    for fmt in ("csv", "jsonl", "parquet"):
        outs[fmt] = tmp_path / f"t.{fmt}"
        proc = run_matpac(
            [
                "tag",
                "music",
                str(tmp_path / "broken.wav"),
                "--model",
                str(ckpts["tiny608"]),
                "--device",
                "cpu",
                "-q",
                *heads,
                "--out",
                str(outs[fmt]),
            ],
            cwd=run,
            timeout=300,
        )
        assert proc.returncode == 1, proc.stderr.decode()  # the broken file
    got = rows(outs["csv"])
    genre = {r["path"]: r for r in got if r["head"] == "mtg_genre" and r["rank"] in ("0", "1")}
    unlabelled = sorted(p for p, r in genre.items() if r["rank"] == "0")
    assert set(genre) == set(FILES) and 0 < len(unlabelled) < len(FILES), genre
    for path in unlabelled:
        mine = [r for r in got if r["path"] == path and r["head"] == "mtg_genre"]
        assert len(mine) == 1 and mine[0]["label"] == mine[0]["score"] == mine[0]["tag_id"] == "", mine
    assert all(float(r["duration_s"]) == pytest.approx(FILES[r["path"]], abs=1e-3) for r in got)
    assert all(float(r["score"]) >= threshold for r in got if r["rank"] != "0")
    typed = {fmt: read_tags(out).rows for fmt, out in outs.items()}
    for fmt in ("jsonl", "parquet"):  # the same rows, the no-label ones null in every format
        assert [(r["path"], r["head"], r["label"], r["rank"], r["duration_s"]) for r in typed[fmt]] == [
            (r["path"], r["head"], r["label"], r["rank"], r["duration_s"]) for r in typed["csv"]
        ]
    assert all(r["label"] is r["score"] is r["tag_id"] is None for r in typed["jsonl"] if r["rank"] == 0)
    raw = [json.loads(line) for line in outs["jsonl"].read_text().splitlines()]
    assert any(r["rank"] == 0 and r["label"] is None and r["score"] is None for r in raw)
    manifest = json.loads((tmp_path / "t.csv.manifest.json").read_text())
    assert [f["path"] for f in manifest["failures"]] == [str(tmp_path / "broken.wav")]

    proc = run_matpac(["report", str(outs["csv"]), "--out", str(tmp_path / "r.html")], cwd=run, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "matpac: report of 4 file(s)" in err, err
    assert "matpac: warning: 1 file(s) failed in the tag run and have no rows; the page lists them." in err, err
    html = (tmp_path / "r.html").read_text()
    assert '<div class="fact"><b>4</b>files</div>' in html
    assert "Failed files (1)" in html and str(tmp_path / "broken.wav") in html
    caption = html.split("<figcaption>mtg_genre:")[1].split("</figcaption>")[0]
    assert f"{len(unlabelled)} file(s) with no label score \u2265 {threshold:g}" in caption, caption
    data = page_data(html)
    assert data["dur"] == [round(FILES[p], 1) for p in data["paths"]]  # from duration_s alone
    assert "Durations are unknown" not in html


def test_tag_report_needs_a_file_out_and_is_refused_before_the_model_loads(tmp_path, capsys):
    write_audio(tmp_path / "a.wav", 1.0)
    capsys.readouterr()
    code = main(
        ["tag", str(tmp_path / "a.wav"), "--model", str(tmp_path / "missing.pt"), "--report", str(tmp_path / "r.html")]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and err
        == f"matpac: error: --report {tmp_path / 'r.html'} is built from the tags file: give --out tags.csv (not stdout)\n"
    )
    code = main(
        [
            "tag",
            str(tmp_path / "a.wav"),
            "--model",
            str(tmp_path / "missing.pt"),
            "--out",
            str(tmp_path / "t.csv"),
            "--report",
            str(tmp_path / "r.txt"),
        ]
    )
    assert code == 2 and "--report" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()


def test_a_large_library_is_sampled_on_the_map_and_says_so(tmp_path):
    from matpac_cli.jobs.report import build_report
    from matpac_cli.jobs.report.page import MAP_POINTS

    n = MAP_POINTS + 500
    names = [f"lib/{i:05d}.wav" for i in range(n)]
    with open(tmp_path / "t.csv", "w") as fh:
        fh.write("path,head,label,score,rank,tag_id\n")
        fh.writelines(f"{p},mtg_genre,{'rock' if i % 3 else 'jazz'},0.9,1,genre---x\n" for i, p in enumerate(names))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.standard_normal((n, 8)).astype(np.float32))
    (tmp_path / "e.csv").write_text(
        "row,path,duration_s,sample_rate,channels,truncated\n"
        + "".join(f"{i},{p},30,16000,1,0\n" for i, p in enumerate(names))
    )
    result = build_report(tmp_path / "t.csv", tmp_path / "r.html", embeddings=tmp_path / "e.npy", neighbours=0)
    html = (tmp_path / "r.html").read_text()
    assert result.files == n and len(re.findall(r"<circle ", html)) == MAP_POINTS
    assert f"{n:,} files are embedded; a random {MAP_POINTS:,} of them are drawn." in html
    assert page_data(html)["tl"] is False and page_data(html)["timelines"] is None  # no --segments
    assert f"<b>{n * 30 / 3600:.2f}</b>hours of audio" in html


# ---------------------------------------------------------------- in a real browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("MATPAC_REQUIRE_BROWSER") == "1":
        pytest.fail("MATPAC_REQUIRE_BROWSER=1 but no chromium binary on PATH")
    pytest.skip("no chromium binary (apt-get install chromium)")


def browse(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    proc = subprocess.run([chromium(), *flags, *extra, page.as_uri()], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc


HARNESS = """<script>
(async () => {
  const rowsNow = () => [...document.querySelectorAll("#files tbody tr td:first-child")].map((td) => td.textContent);
  const out = { all: rowsNow() };
  const filter = document.getElementById("filter");
  filter.value = "SUB/C"; filter.dispatchEvent(new Event("input"));
  out.filtered = rowsNow(); out.count = document.getElementById("count").textContent;
  filter.value = ""; filter.dispatchEvent(new Event("input"));
  document.querySelectorAll("#files th")[1].click(); document.querySelectorAll("#files th")[1].click();
  out.longest_first = rowsNow();
  await show(D.paths.indexOf("music/sub/c d.flac"));
  out.timelines = document.querySelectorAll("#file svg.timeline").length;
  out.cells = document.querySelectorAll("#file svg.timeline rect").length;
  out.audio = [...document.querySelectorAll("#file audio")].map((a) => a.getAttribute("src"));
  out.neighbours = [...document.querySelectorAll("#file ol.nn li")].length;
  out.bars = document.querySelectorAll("svg.bars").length;
  out.points = document.querySelectorAll("#map circle").length;
  out.resources = performance.getEntriesByType("resource").map((e) => e.name);
  const pre = document.createElement("pre"); pre.id = "harness"; pre.textContent = JSON.stringify(out);
  document.body.append(pre);
})();
</script></body>"""


@pytest.mark.slow  # a browser start
def test_page_in_headless_chromium(report, tmp_path):
    """The page as a browser renders it: every file in the table, the charts, the filter, the
    sort, a file's timelines with its player and neighbours; no request leaves the page."""
    page = report.parent / "harness.html"
    page.write_text(report.read_text().replace("</body>", HARNESS))
    dom = browse(page, tmp_path, "--dump-dom").stdout.decode()
    found = json.loads(
        re.search(r'<pre id="harness">(.*?)</pre>', dom, re.S)
        .group(1)
        .replace("&quot;", '"')
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
    )
    assert sorted(found["all"]) == sorted(FILES)
    assert found["filtered"] == ["music/sub/c d.flac"] and found["count"] == "1 of 4 files match"
    assert found["longest_first"] == sorted(FILES, key=lambda p: -FILES[p])
    assert found["timelines"] == 2 and found["cells"] > 0
    assert found["audio"] == ["../music/sub/c%20d.flac"] and found["neighbours"] == 3
    assert found["bars"] == 2 and found["points"] == 4
    assert found["resources"] == []


@pytest.mark.slow  # a browser start
def test_screenshot_of_the_page(report, tmp_path):
    shot = tmp_path / "report.png"
    browse(report, tmp_path, "--window-size=1280,1900", f"--screenshot={shot}", "--hide-scrollbars")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a blank page compresses to a few KB
