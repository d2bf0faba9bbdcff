"""The report page: HTML and CSS written here, the charts from `svg`, the data as one JSON block
that `page.js` (package data) turns into the files table and a file's timelines.

Nothing in the page is fetched: no CDN, no web font, no image file; styles, script and data are
inline, so the file opens from disk offline, or as a mail attachment. The table and the
timelines are drawn by the script from compact data (5,000 timelines as SVG would be 100 MB;
as quantised scores, gzipped, they are 1.4 MB).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from importlib.resources import files

import numpy as np

from matpac_cli import __version__
from matpac_cli.jobs.report import svg
from matpac_cli.jobs.report.data import TIMELINE_COLUMNS, TIMELINE_LABELS, Library
from matpac_cli.jobs.report.mapping import Map

GENERATOR = "matpac report"  # <meta name="generator">: how matpac knows a page it may replace
MAP_POINTS = 10_000  # points drawn on the map; a larger library is sampled
FAILED_SHOWN = 200  # failed files listed in the page


@dataclass
class Content:
    title: str
    tags_path: str
    lib: Library
    durations: list[float | None]
    manifest: dict | None
    notes: list[str] = field(default_factory=list)
    map: Map | None = None
    emb_paths: list[str] = field(default_factory=list)
    emb_label: str = ""
    audio: list[str] | None = None


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _asset(name: str) -> str:
    return files("matpac_cli.jobs.report").joinpath(name).read_text(encoding="utf-8")


def kept_name(manifest: dict | None) -> str:
    """What 'kept' meant for the run's clip rows, from its manifest."""
    output = (manifest or {}).get("output") or {}
    if output.get("threshold") is not None:
        return f"score \u2265 {output['threshold']:g}"
    if output.get("top_k"):
        return f"in top {output['top_k']}"
    return "kept"


def failures(manifest: dict | None) -> tuple[list[tuple[str, str]], int]:
    """The tag run's failed files as its manifest names them (path, reason; the first
    FAILED_SHOWN), and how many failed in all (`counts.failed`). Entries of another shape are
    skipped, so a hand-edited manifest still gives a page."""
    man = manifest if isinstance(manifest, dict) else {}
    listed = man.get("failures") if isinstance(man.get("failures"), list) else []
    named = [
        (str(f["path"]), str(f.get("reason", ""))) for f in listed[:FAILED_SHOWN] if isinstance(f, dict) and "path" in f
    ]
    count = (man.get("counts") if isinstance(man.get("counts"), dict) else {}).get("failed")
    if not isinstance(count, int) or isinstance(count, bool) or count < len(named):
        count = len(named)
    return named, count


def _selection(output: dict) -> str:
    k, t = output.get("top_k"), output.get("threshold")
    parts = [f"top {k} per head"] if k else ["every label"] if k == 0 and t is None else []
    return ", ".join(parts + ([f"score \u2265 {t:g}"] if t is not None else [])) or "?"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="small"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summary_html(c: Content) -> str:
    known = [d for d in c.durations if d is not None]
    hours = f"{sum(known) / 3600:.2f}" if known else "-"
    unknown = len(c.durations) - len(known)
    facts = [
        ("files", f"{len(c.lib.paths):,}"),
        ("hours of audio" + (f" ({unknown:,} files of unknown length)" if unknown and known else ""), hours),
        ("heads", len(c.lib.heads)),
        ("timelines", "yes" if c.lib.segments else "no (no --segments)"),
    ]
    if c.map is not None:
        facts.append(("on the map", f"{len(c.map.placed):,}"))
    named, failed = failures(c.manifest)
    if failed:
        facts.append(("failed in the tag run (no rows)", f"{failed:,}"))
    out = ['<div class="facts">'] + [f'<div class="fact"><b>{_e(v)}</b>{_e(k)}</div>' for k, v in facts] + ["</div>"]
    man = c.manifest or {}
    models = [
        [m.get("name"), m.get("source"), (m.get("sha256") or "")[:12], m.get("device"), m.get("precision")]
        for m in man.get("models") or []
    ]
    heads = [
        [h.get("name"), h.get("encoder"), h.get("classes"), h.get("activation"), h.get("source")]
        for h in man.get("heads") or []
    ]
    tables = []
    if models:
        tables.append(
            "<div><h4>Models</h4>" + _table(["model", "source", "sha256", "device", "precision"], models) + "</div>"
        )
    if heads:
        tables.append(
            "<div><h4>Heads</h4>" + _table(["head", "encoder", "classes", "activation", "probe"], heads) + "</div>"
        )
    out.append(f'<div class="grid">{"".join(tables)}</div>')
    if man:
        output = man.get("output") or {}
        out.append(
            f'<p class="meta">Tagged {_e(man.get("created", "?"))} by matpac {_e(man.get("matpac_version", "?"))}; '
            f"rows kept: {_e(_selection(output))}; "
            f"command: <code>{_e(' '.join(map(str, man.get('command') or [])))}</code></p>"
        )
    for note in c.notes:
        out.append(f'<p class="note">{_e(note)}</p>')
    if failed:
        more = failed - len(named)
        out.append(
            f"<div><h4>Failed files ({failed:,})</h4>"
            + (_table(["path", "reason"], named) if named else "")
            + (
                f'<p class="note">{"and " if named else ""}{more:,} {"more " if named else ""}not named here '
                "(the tag run's --failures file lists them all)</p>"
                if more
                else ""
            )
            + "</div>"
        )
    return "\n".join(out)


def labels_html(c: Content) -> str:
    name = kept_name(c.manifest)
    figures = []
    for stats in c.lib.heads:
        chart, shown = svg.label_bars(stats.labels, stats.top1, stats.kept, name)
        seen = len(set(stats.kept) | set(stats.top1))
        more = f"; the {shown} most frequent shown" if shown < seen else ""
        if stats.unlabelled:
            more += f"; {stats.unlabelled:,} file(s) with no label {name}"
        figures.append(
            f"<figure><figcaption>{_e(stats.name)}: {seen} labels in the clip rows{more}</figcaption>{chart}</figure>"
        )
    return (
        f'<p class="meta">Files per label: dark, the label is the file\'s top-1; light, the label is '
        f'{_e(name)} (clip scores, one per file).</p><div class="grid">{"".join(figures)}</div>'
    )


def files_html(c: Content) -> str:
    heads = "".join(f"<th>{_e(h.name)}</th>" for h in c.lib.heads)
    return (
        '<input id="filter" type="search" placeholder="filter: path or label words" autocomplete="off">'
        '<span id="count"></span><div class="scroll"><table id="files"><thead><tr><th>path</th><th>duration</th>'
        f"{heads}</tr></thead><tbody></tbody></table></div>"
    )


def timeline_html(c: Content) -> str:
    notes = []
    if c.lib.segments:
        notes.append(
            f"Each head's {TIMELINE_LABELS} labels with the highest mean score over the file's segments; "
            "grey: the label was not among that segment's kept rows. Hover a cell for its score"
            + ("; click it to play that moment." if c.audio else ".")
        )
        pooled = [f"{h.name}: {h.pooled}" for h in c.lib.heads if h.pooled]
        if pooled:
            notes.append(
                f"Files of more than {TIMELINE_COLUMNS} segments are shown pooled (maximum) into "
                f"{TIMELINE_COLUMNS} columns ({', '.join(pooled)} files)."
            )
    return "".join(f'<p class="note">{_e(n)}</p>' for n in notes) + '<div id="file"></div>'


def map_html(c: Content) -> str:
    m = c.map
    n = len(m.placed)
    pick = np.arange(n)
    notes = [
        f"Clip embeddings ({_e(c.emb_label)}) on their first two principal components; "
        "hover a point for its file, click it for its timeline."
    ]
    if n > MAP_POINTS:
        pick = np.sort(np.random.default_rng(0).choice(n, MAP_POINTS, replace=False))
        notes.append(f"{n:,} files are embedded; a random {MAP_POINTS:,} of them are drawn.")
    if m.layer_note:
        notes.append(m.layer_note)
    ids = [m.placed[j] for j in pick]
    classes, legends = [], []
    for h, stats in enumerate(c.lib.heads):
        top = [c.lib.top[i][h][0] if c.lib.top[i][h] else None for i in ids]
        col, common = svg.colour_classes(top)
        classes.append(col)
        keys = "".join(
            f'<span><i style="background:{svg.PALETTE[k]}"></i>{_e(stats.labels[label])}</span>'
            for k, label in enumerate(common)
        )
        legends.append(
            f'<div class="legend" data-h="{h}">{keys}<span><i style="background:{svg.OTHER}"></i>other</span></div>'
        )
    options = "".join(f'<option value="{h}">{_e(s.name)}</option>' for h, s in enumerate(c.lib.heads))
    axes = tuple(f"PC{k + 1} ({m.explained[k]:.0%} of the variance)" for k in range(2))
    chart = svg.scatter(m.xy[pick], ids, [c.lib.paths[i] for i in ids], classes, axes)
    return (
        "".join(f'<p class="note">{t}</p>' for t in notes)
        + f'<label>colour by the top-1 label of <select id="maphead">{options}</select></label>'
        + "".join(legends)
        + chart
        + f"<style>{svg.colour_css(len(c.lib.heads))}</style>"
    )


def data_json(c: Content) -> str:
    lib = c.lib
    data = {
        "heads": [{"name": h.name, "labels": h.labels} for h in lib.heads],
        "paths": lib.paths,
        "dur": [None if d is None else round(d, 1) for d in c.durations],
        "top": lib.top,
        "tl": bool(lib.segments),
        "audio": c.audio,
        "nn": None,
        "xp": [],
    }
    if c.map is not None and c.map.neighbours:
        file_of = {row: i for i, row in enumerate(c.map.rows) if row is not None}
        extra: dict[int, int] = {}
        nn: list[list[int] | None] = [None] * len(lib.paths)
        for i, found in zip(c.map.placed, c.map.neighbours):
            flat = []
            for row, cos in found:
                target = file_of.get(row)
                if target is None:
                    target = -1 - extra.setdefault(row, len(extra))
                flat += [target, int(round(cos * 1000))]
            nn[i] = flat
        data["nn"] = nn
        data["xp"] = [c.emb_paths[row] for row in extra]
    return _json(data)


def _json(data: object) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")  # never `</script>` inside the block


def timelines_blob(c: Content) -> str:
    """The timelines, gzipped and base64-encoded (the page inflates them with the browser's
    DecompressionStream when a file is first shown): 3.8 MB of JSON for 5,000 tracks, 1.4 MB so."""
    if not c.lib.segments:
        return ""
    raw = _json(c.lib.timelines).encode("utf-8", "backslashreplace")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def render(c: Content) -> str:
    sections = [
        ("summary", "Library", summary_html(c)),
        ("labels", "Labels", labels_html(c)),
        ("table", "Files", files_html(c)),
        ("timeline", "File", timeline_html(c)),
    ]
    if c.map is not None:
        sections.append(("similar", "Map", map_html(c)))
    body = "\n".join(f'<section id="s-{sid}"><h2>{_e(title)}</h2>\n{html}</section>' for sid, title, html in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="{GENERATOR} {__version__}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(c.title)}</title>
<style>{_asset("page.css")}</style></head>
<body><main>
<h1>{_e(c.title)}</h1>
<p class="meta">Tags: {_e(c.tags_path)}{" · embeddings: " + _e(c.emb_label) if c.map is not None else ""} · written by matpac {__version__}; this page needs no network.</p>
{body}
</main>
<script type="application/json" id="matpac-data">{data_json(c)}</script>
<script type="application/gzip;base64" id="matpac-timelines">{timelines_blob(c)}</script>
<script>{_asset("page.js")}</script>
</body></html>
"""
