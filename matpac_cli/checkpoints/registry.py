"""The weight registry shipped in the wheel (`weights/registry.toml` and `weights/labels/`).

Plain data: which models and heads exist, where they live, how their outputs are read. Nothing
here downloads; `resolve.py` turns a spec into a local file.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from matpac_cli.errors import UsageError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    hub: str | None = None
    revision: str | None = None
    release: str | None = None
    sha256: str | None = None
    family: str | None = None  # probe family, e.g. "music"


@dataclass(frozen=True)
class HeadSpec:
    name: str
    description: str
    classes: int
    activation: str  # "sigmoid" (multi-label) or "softmax" (single-label)
    labels_file: str
    task: str | None = None  # stem of the probe file in the zip
    builtin: str | None = None  # model whose checkpoint carries this head
    confirmed_order: bool = True
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def labels(self) -> list[str]:
        path = weights_dir() / "labels" / self.labels_file
        return read_labels(path)


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    heads: dict[str, HeadSpec]
    families: dict[str, str]  # family -> folder in the probe zip
    release_base: str
    probes_release: str

    def head(self, name: str) -> HeadSpec:
        """A head by its name or a friendly alias (`genre` -> mtg_genre)."""
        key = name.lower()
        if key in self.heads:
            return self.heads[key]
        for head in self.heads.values():
            if key in head.aliases:
                return head
        known = sorted(self.heads) + sorted(a for h in self.heads.values() for a in h.aliases)
        raise UsageError(f"unknown head {name!r}{suggest(key, known)}; known heads and aliases: {', '.join(known)}")

    def encoders_for(self, head: HeadSpec) -> list[str]:
        """Registry models a head exists for: its own model, or the encoders with a probe family."""
        if head.builtin:
            return [head.builtin]
        return [m.name for m in self.models.values() if m.family in self.families]


def suggest(name: str, known: list[str]) -> str:
    """` (did you mean X?)` for a near miss among `known`, else an empty string."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def weights_dir() -> Path:
    """Package data when installed; the repo's `weights/` when run from a checkout."""
    packaged = resources.files("matpac_cli") / "weights"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "weights"


def read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read labels file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"labels file {path}: not UTF-8 text (byte {exc.start})") from None
    return [ln.strip() for ln in lines if ln.strip()]


@lru_cache(maxsize=1)
def load_registry() -> Registry:
    raw = tomllib.loads((weights_dir() / "registry.toml").read_text(encoding="utf-8"))
    models = {
        name: ModelSpec(
            name=name,
            description=m.get("description", ""),
            hub=m.get("hub"),
            revision=m.get("revision"),
            release=m.get("release"),
            sha256=m.get("sha256"),
            family=m.get("family"),
        )
        for name, m in raw["models"].items()
    }
    heads = {
        name: HeadSpec(
            name=name,
            description=h.get("description", ""),
            classes=int(h["classes"]),
            activation=h["activation"],
            labels_file=h["labels"],
            task=h.get("task"),
            builtin=h.get("builtin"),
            confirmed_order=h.get("order", "confirmed") != "unconfirmed",
            aliases=tuple(h.get("aliases", ())),
        )
        for name, h in raw["heads"].items()
    }
    return Registry(
        models=models,
        heads=heads,
        families={k: v["folder"] for k, v in raw.get("families", {}).items()},
        release_base=raw["sources"]["release_base"],
        probes_release=raw["sources"]["probes"],
    )
