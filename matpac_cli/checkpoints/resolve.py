"""Resolve a model spec to a verified local checkpoint (downloading through `downloads.py`,
reading through `checkpoints/read.py`).

A spec is a registry name, a local file (`.pt`/`.pth` release layout or `.safetensors`), or
`hf:OWNER/REPO[@REVISION]`. Registry models come from the Hugging Face Hub through
`huggingface_hub` (its cache, HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE / HF_ENDPOINT honoured)
and, failing that, from the official release over plain HTTP into the same cache root
(`$HF_HOME/matpac/releases`, resumable). Every file's sha256 is checked against the registry, or
against the hash recorded the first time it was fetched; a mismatch is refused, never loaded.
Pickles are only read with `torch.load(weights_only=True)`; no remote code ever runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from matpac_cli.checkpoints.downloads import (  # noqa: F401 - re-exported for callers and messages
    LOCAL_MODEL,
    PROBES_HINT,
    WEIGHT_SUFFIXES,
    NoNetwork,
    Unreachable,
    _hub_download,
    connection_failure,
    hf_home,
    host_of,
    hub_cache,
    hub_endpoint,
    matpac_cache,
    no_network,
    offline,
    recorded_hashes,
    release_base,
    release_download,
    release_path,
    sha256_of,
    verify,
)
from matpac_cli.checkpoints.read import (  # noqa: F401 - re-exported: callers load through weights
    check_encoder_keys,
    check_finite,
    has_audioset_head,
    load_checkpoint,
    map_keys,
    read_weights_file,
    split_head_keys,
)
from matpac_cli.checkpoints.registry import ModelSpec, load_registry, suggest
from matpac_cli.errors import ChecksumError, ModelError, WeightsError, one_line


@dataclass(frozen=True)
class Resolved:
    """Where a checkpoint came from, for provenance and for messages."""

    name: str  # registry name, file path or hf:repo
    path: Path
    source: str  # "hub:owner/repo@commit", "release:URL" or "file"
    sha256: str
    spec: ModelSpec | None = None
    state: dict | None = field(default=None, repr=False, compare=False)

    def load(self) -> dict:
        """The mapped state dict (already read when the Hub copy had to be checked).

        Read here, it is checked against the encoder at once, so a misfit names the file."""
        if self.state is not None:
            return self.state
        state = load_checkpoint(self.path)
        check_encoder_keys(state, str(self.path))
        return state


# ---------------------------------------------------------------- resolve


def parse_hf(spec: str) -> tuple[str, str | None]:
    body = spec[3:]
    repo, _, revision = body.partition("@")
    if repo.count("/") != 1:
        raise ModelError(f"{spec!r}: expected hf:OWNER/REPO[@REVISION]")
    return repo, revision or None


def fetch_hint(name: str) -> str:
    return f"matpac models download {name}"


def resolve(spec: str, progress: bool = False, force: bool = False) -> Resolved:
    """Turn a model spec into a verified local file, downloading it if needed."""
    if spec.startswith("hf:"):
        repo, revision = parse_hf(spec)
        try:
            path, source = _guard(lambda: _hub_download(repo, revision, progress, force), spec)
        except Unreachable as exc:
            raise no_network(f"model {spec}", [exc], fetch_hint(spec), LOCAL_MODEL, ("model",)) from None
        return Resolved(spec, path, source, verify(path, source, None, fetch_hint(spec)))
    registry = load_registry()
    if spec in registry.models:
        return _resolve_registered(registry.models[spec], progress, force)
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            digest = sha256_of(path)
        except OSError as exc:
            raise ModelError(f"cannot read model file {spec}: {exc.strerror or exc}") from None
        return Resolved(spec, path, "file", digest, registered_as(digest))
    if path.is_dir():
        raise ModelError(f"model {spec} is a folder, not a checkpoint file; give the weights file inside it")
    if path.suffix in WEIGHT_SUFFIXES or os.sep in spec:
        raise ModelError(f"model file {spec} does not exist")
    raise ModelError(
        f"unknown model {spec!r}{suggest(spec, list(registry.models))}; use a registry name "
        f"({', '.join(registry.models)}), a checkpoint file, or hf:OWNER/REPO[@REVISION]"
    )


def registered_as(digest: str) -> ModelSpec | None:
    """The registry model a local file is, known by its content: its sha256 is the one pinned in
    the registry or recorded when matpac downloaded that model; a renamed copy is still known,
    and a file merely named like one is not."""
    registry = load_registry()
    for m in registry.models.values():
        if m.sha256 and m.sha256.lower() == digest:
            return m
    records = recorded_hashes()
    for key, value in records.items() if isinstance(records, dict) else ():
        name = key.split("|", 1)[0]
        if isinstance(value, str) and value.lower() == digest and name in registry.models:
            return registry.models[name]
    return None


def model_file_spec(spec: str) -> ModelSpec | None:
    """`registered_as` for a --model value that is a local file (hashed once: the hash cache
    keeps it for the load); None for anything else or a file it cannot read."""
    path = Path(spec).expanduser()
    if spec.startswith("hf:") or spec in load_registry().models or not path.is_file():
        return None
    try:
        return registered_as(sha256_of(path))
    except OSError:
        return None


def _resolve_registered(m: ModelSpec, progress: bool, force: bool) -> Resolved:
    """Hub first, then the release; the error lists why each source failed."""
    errors: list[tuple[str, WeightsError | ModelError]] = []
    attempts: list[tuple[str, Callable[[], tuple[Path, str]]]] = []
    if m.hub:
        attempts.append(("Hub", lambda: _hub_download(m.hub, m.revision, progress, force)))
    if m.release:
        hint = fetch_hint(m.name)
        attempts.append(("release", lambda: release_download(m.release, progress, force, hint)))
    for label, attempt in attempts:
        try:
            path, source = _guard(attempt, m.name)
            key = f"{m.name}|{source}"
            digest = verify(path, key, m.sha256 if label == "release" else None, fetch_hint(m.name))
            state = None
            if label == "Hub":  # an unmappable port falls through to the release file
                state = load_checkpoint(path)
                check_encoder_keys(state, str(path))
            return Resolved(m.name, path, source, digest, m, state)
        except ChecksumError:
            raise
        except (WeightsError, ModelError) as exc:
            errors.append((label, exc))
    if offline():
        raise WeightsError(
            f"model {m.name} is not in the cache and HF_HUB_OFFLINE is set; "
            f"run `{fetch_hint(m.name)}` with network access first"
        )
    unreachable = [exc for _, exc in errors if isinstance(exc, Unreachable)]
    if unreachable and len(unreachable) == len(errors):
        raise no_network(f"model {m.name}", unreachable, fetch_hint(m.name), LOCAL_MODEL, ("model",))
    raise WeightsError(f"cannot get model {m.name}: " + "; ".join(f"{label}: {exc}" for label, exc in errors))


def _guard(attempt: Callable[[], tuple[Path, str]], name: str) -> tuple[Path, str]:
    """Turn huggingface_hub's exceptions into one-line WeightsErrors (Unreachable: no connection)."""
    try:
        return attempt()
    except (WeightsError, ModelError):
        raise
    except Exception as exc:  # noqa: BLE001 - proxies, captive portals, dropped connections
        raise _hub_error(exc, name) from None


def _hub_error(exc: Exception, name: str) -> WeightsError:
    from huggingface_hub import errors as hf_errors

    why = connection_failure(exc)
    if why:
        return Unreachable(host_of(hub_endpoint()), why)
    if isinstance(exc, hf_errors.LocalEntryNotFoundError) and offline():
        return WeightsError(
            f"{name} is not in the cache and HF_HUB_OFFLINE is set; run `{fetch_hint(name)}` with network access first"
        )
    if isinstance(exc, (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError)):
        return WeightsError(f"{name}: {type(exc).__name__}")
    return WeightsError(f"{name}: {one_line(exc)}")


def cached_files(m: ModelSpec) -> list[tuple[str, Path]]:
    """Files of a registry model already in the cache, with the journal key of their hash."""
    found: list[tuple[str, Path]] = []
    if m.hub:
        repo_dir = hub_cache() / ("models--" + m.hub.replace("/", "--")) / "snapshots"
        for snap in sorted(repo_dir.glob("*")) if repo_dir.is_dir() else []:
            for p in sorted(snap.rglob("*")):
                if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
                    found.append((f"{m.name}|hub:{m.hub}@{snap.name}", p))
    if m.release:
        dest = release_path(m.release)
        if dest.is_file():
            found.append((f"{m.name}|release:{release_base() + m.release}", dest))
    return found


def cached_for_verify() -> list[tuple[str, str, Path, str | None]]:
    """Every cached weight file: (name, hash-record key, path, pinned sha256 or None)."""
    registry = load_registry()
    out = []
    for m in registry.models.values():
        for key, path in cached_files(m):
            pinned = m.sha256 if key.split("|", 1)[1].startswith("release") else None
            out.append((m.name, key, path, pinned))
    zpath = release_path(registry.probes_release)
    if zpath.is_file():
        out.append(("probes", f"probes|release:{release_base() + registry.probes_release}", zpath, None))
    return out
