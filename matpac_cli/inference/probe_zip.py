"""The authors' probe release: one zip of `<task>.pth` linear probes per encoder family.

Downloaded once into the cache, verified by sha256, extracted only when every entry lands inside
its folder (a zip entry is never trusted to name its own path), and read by task and family.
Offline, a missing zip is said before any model loads. `inference.heads` builds heads from the
files found here; `matpac models` lists and fetches the zip through here.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from matpac_cli.checkpoints.registry import load_registry
from matpac_cli.errors import WeightsError

HEAD_SUFFIXES = (".pth", ".pt", ".safetensors")  # the files a head is read from, in the zip or given by path


def probes_dir(progress: bool = False, force: bool = False) -> Path:
    """Download (once), verify and safely extract the authors' probe zip; return its folder."""
    from matpac_cli.checkpoints.resolve import (
        PROBES_HINT,
        Unreachable,
        matpac_cache,
        no_network,
        release_base,
        release_download,
        verify,
    )

    registry = load_registry()
    check_probes_cached()
    key = (str(matpac_cache()), release_base() + registry.probes_release)
    if key in _VERIFIED_PROBES and not force:  # hashed once per process, not once per head
        return _VERIFIED_PROBES[key]
    try:
        zpath, source = release_download(registry.probes_release, progress, force, PROBES_HINT)
    except Unreachable as exc:
        raise no_network("the probe heads", [exc], PROBES_HINT, "heads=FILE with a local probe", ("heads",)) from None
    digest = verify(zpath, f"probes|{source}", None, PROBES_HINT)
    target = matpac_cache() / "probes" / digest[:16]
    if not (target / ".complete").exists():
        extract_safely(zpath, target)
    _VERIFIED_PROBES[key] = target
    return target


_VERIFIED_PROBES: dict[tuple[str, str], Path] = {}


def check_probes_cached() -> None:
    """Offline (HF_HUB_OFFLINE), the probe heads need the probe zip in the cache: said with the
    two ways round it before any model loads."""
    from matpac_cli.checkpoints.resolve import PROBES_HINT, offline, release_path

    zpath = release_path(load_registry().probes_release)
    if offline() and not zpath.is_file():
        raise WeightsError(
            f"the probe heads need {zpath.name}, which is not in the cache and HF_HUB_OFFLINE is set; "
            f"run `{PROBES_HINT}` on a connected machine and copy its HF_HOME here, "
            "or give heads=FILE with a probe file (such as mtg_genre.pth from that zip)",
            settings=("heads",),
        )


def extract_safely(zpath: Path, target: Path) -> None:
    """Extract a zip, refusing it whole if any entry would land outside `target`."""
    try:
        with zipfile.ZipFile(zpath) as zf:
            for info in zf.infolist():
                p = PurePosixPath(info.filename.replace("\\", "/"))
                if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
                    raise WeightsError(f"{zpath.name}: refusing unsafe zip entry {info.filename!r}")
            target.mkdir(parents=True, exist_ok=True)
            root = target.resolve()
            for info in zf.infolist():
                dest = (target / info.filename).resolve()
                if root not in dest.parents and dest != root:
                    raise WeightsError(f"{zpath.name}: refusing unsafe zip entry {info.filename!r}")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"{zpath}: not a valid zip ({exc})") from None
    (target / ".complete").touch()


def find_probe(folder: Path, family: str, task: str) -> Path:
    """Find `<task>.pth` under the family's folder, whatever the nesting."""
    fam_folder = load_registry().families.get(family, family)
    hits = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in HEAD_SUFFIXES and p.stem == task and fam_folder in p.relative_to(folder).parts
    )
    if not hits:
        raise WeightsError(f"the probe zip has no {task} head for the {family} encoder")
    return hits[0]


def zip_tasks(zpath: Path) -> dict[str, set[str]]:
    """The probe tasks a (cached) probe zip holds for each encoder family, read from its index."""
    families = load_registry().families
    try:
        with zipfile.ZipFile(zpath) as zf:
            names = [PurePosixPath(n.replace("\\", "/")) for n in zf.namelist()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{zpath}: not a readable zip ({exc})") from None
    return {
        family: {p.stem for p in names if p.suffix in HEAD_SUFFIXES and folder in p.parts[:-1]}
        for family, folder in families.items()
    }
