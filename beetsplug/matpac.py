"""matpac's beets plugin: `beet matpac [QUERY]` tags a beets library's items with matpac's heads.

beets users keep their music in beets' database and query it (`beet ls mood:happy`); the mood
and genre data they used to get from AcousticBrainz is gone. This plugin fills it from matpac:
each matching item is tagged through matpac's library API, the same run `matpac tag` makes
(`load_groups` then `tag`), so the encoder runs only on audio matpac's library lacks and a second
`beet matpac` encodes nothing. Enable it with `plugins: matpac` in beets' config.

Per item it stores beets flexible attributes: `mood` (only when the mood head keeps a label: a
`mood` of the user's is never removed) and `matpac_mood` (the mood head's labels),
`matpac_genre`, `matpac_instruments` (labels best first, joined by `separator`, "; " as
`matpac tag --write` joins them), `matpac_<kind>_score` (the top label's score, a float field, so
`beet ls matpac_genre_score:0.5..` works) and `matpac_source` (which matpac, model and heads).
`-w` writes them into the files through beets' own writing (`item.try_write()`), in the fields
`matpac tag --write` uses (`matpac_cli.outputs.filetags`): MOOD as ID3 TMOO, MP4
`----:com.apple.iTunes:MOOD`, Vorbis `MOOD`; the matpac_* fields as TXXX:MATPAC_*, MP4 freeform
and Vorbis comments of the same upper-case names. The scores stay in beets' database.

Config (`matpac:` in beets' config; defaults as `matpac tag`'s): `model` (None: each head's own
encoder), `heads` (names, aliases or probe files; default genre, mood, instrument), `device`,
`top_k`, `threshold`, `library` (matpac's library folder; None: its default), `separator`.
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict

import mediafile
from beets import ui
from beets.dbcore import types
from beets.plugins import BeetsPlugin

from matpac_cli.outputs.filetags import MP4_FREE, OURS, SEPARATOR, kind_of

KINDS = ("genre", "mood", "instruments")  # the fields a head can feed (`filetags.KINDS`' values)
MEDIA = {"mood": "MOOD", **{name.lower(): name for name in OURS}}  # beets field -> matpac's tag name


def _media_field(tag: str) -> mediafile.MediaField:
    """One field across formats, named as `matpac tag --write` names it (`filetags`)."""
    mp3 = mediafile.MP3StorageStyle("TMOO") if tag == "MOOD" else mediafile.MP3DescStorageStyle(tag)
    return mediafile.MediaField(mp3, mediafile.MP4StorageStyle(MP4_FREE + tag), mediafile.StorageStyle(tag))


class MatpacPlugin(BeetsPlugin):
    """Registers the `matpac` command, the media fields and the score fields' type."""

    item_types = {f"matpac_{kind}_score": types.FLOAT for kind in KINDS}

    def __init__(self) -> None:
        super().__init__()
        self.config.add(
            {
                "model": None,
                "heads": [],
                "device": "auto",
                "top_k": None,
                "threshold": None,
                "library": None,
                "separator": SEPARATOR,
            }
        )
        for field, tag in MEDIA.items():
            self.add_media_field(field, _media_field(tag))

    def commands(self) -> list[ui.Subcommand]:
        cmd = ui.Subcommand("matpac", help="tag items with matpac's genre, mood and instrument heads")
        cmd.parser.usage += " [QUERY]"
        cmd.parser.add_option(
            "-w", "--write", action="store_true", default=False, help="also write them into the files (beets' writing)"
        )
        cmd.func = self._command
        return [cmd]

    def _command(self, lib, opts, args) -> None:
        items = list(lib.items(args))
        if not items:
            ui.print_("matpac: no items match")
            return
        try:
            rows, summary = self._tag(items)
        except Exception as exc:
            from matpac_cli import MatpacError

            if isinstance(exc, MatpacError):  # a setting the user can fix: one line, as matpac says it
                raise ui.UserError(f"matpac: {exc}") from None
            raise
        sep = self.config["separator"].as_str()
        source = _source(self._groups)
        with lib.transaction():
            for item in items:
                found = rows.get(os.fsdecode(item.path))
                if found is None:
                    continue  # failed: said above
                _set_fields(item, found, sep, source)
                ui.show_model_changes(item)
                item.store()
        if opts.write:
            for item in items:
                if os.fsdecode(item.path) in rows:
                    item.try_write()
        tagged = summary.done + summary.reused
        ui.print_(f"matpac: {tagged} items tagged ({summary.done} encoded, {summary.reused} from matpac's library)")

    def _tag(self, items: list) -> tuple[dict, object]:
        """Every item's rows (path -> [row]) from matpac's `tag` job, and its summary."""
        from matpac_cli import Listeners, RunOptions, TagConfig, discover, load_groups, tag

        cfg = self.config
        options = RunOptions(device=cfg["device"].as_str())
        threshold = cfg["threshold"].get()
        config = TagConfig(
            top_k=cfg["top_k"].get(),
            threshold=None if threshold is None else float(threshold),
            fmt="jsonl",
            options=options,
            library=cfg["library"].as_filename() if cfg["library"].get() is not None else None,
        )
        self._groups = load_groups(cfg["heads"].as_str_seq() or None, cfg["model"].get(), options)
        out = io.StringIO()
        failed = Listeners(failure=lambda err: self._log.warning("{}", err))
        summary = tag(discover([os.fsdecode(item.path) for item in items]), self._groups, config, None, out, failed)
        rows: dict[str, list[dict]] = defaultdict(list)
        for line in out.getvalue().splitlines():
            row = json.loads(line)
            rows[row["path"]].append(row)
        return rows, summary


def _set_fields(item, rows: list[dict], sep: str, source: str) -> None:
    """The flexible attributes of one item from its tag rows, labels in the rows' order (each
    head's best first, as `tag --write` joins them); a kind whose heads kept no label loses its
    matpac_* fields, as `tag --write` removes them from a file. `mood` is beets' (the user's own,
    perhaps read from the file): set only when the mood heads kept a label, never removed, as
    `tag --write` leaves MOOD alone when it has nothing."""
    labels: dict[str, list[tuple[float, str]]] = {}
    for row in rows:
        kind = kind_of(row["head"])
        if kind is None:
            continue
        kept = labels.setdefault(kind, [])
        if row.get("rank") and row.get("label") and row["label"] not in {name for _, name in kept}:
            kept.append((float(row["score"]), row["label"]))
    for kind, kept in labels.items():
        if not kept:
            for field in (f"matpac_{kind}", f"matpac_{kind}_score"):
                if field in item.keys():
                    del item[field]
            continue
        item[f"matpac_{kind}"] = sep.join(name for _, name in kept)
        item[f"matpac_{kind}_score"] = max(score for score, _ in kept)
        if kind == "mood":
            item["mood"] = item["matpac_mood"]
    if labels:
        item["matpac_source"] = source


def _source(groups: list) -> str:
    """MATPAC_SOURCE as `matpac tag --write` writes it (which matpac, encoders and heads)."""
    from matpac_cli.jobs.tag_write import source_of

    return source_of(groups)
