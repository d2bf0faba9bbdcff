"""Resolve a model spec to a verified local checkpoint and load it strictly.

A spec is a registry name, a local file (`.pt`/`.pth` release layout or `.safetensors`), or
`hf:OWNER/REPO[@REVISION]`. Registry models come from the Hugging Face Hub through
`huggingface_hub` (its cache, HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE / HF_ENDPOINT honoured)
and, failing that, from the official release over plain HTTP into the same cache root
(`$HF_HOME/matpac/releases`, resumable). Every file's sha256 is checked against the registry, or
against the hash recorded the first time it was fetched; a mismatch is refused, never loaded.
Pickles are only read with `torch.load(weights_only=True)`; no remote code ever runs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from matpac_cli.errors import ChecksumError, ModelError, WeightsError
from matpac_cli.registry import ModelSpec, load_registry

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_TRUE = {"1", "true", "yes", "on"}


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
        """The mapped state dict (already read when the Hub copy had to be checked)."""
        return self.state if self.state is not None else load_checkpoint(self.path)


# ---------------------------------------------------------------- cache locations


def hf_home() -> Path:
    env = os.environ.get("HF_HOME")
    if env:
        return Path(env).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME)


def hub_cache() -> Path:
    env = os.environ.get("HF_HUB_CACHE")
    return Path(env).expanduser() if env else hf_home() / "hub"


def matpac_cache() -> Path:
    return hf_home() / "matpac"


def release_path(relpath: str) -> Path:
    """Where a release file lives in the cache (`$HF_HOME/matpac/releases/<tag>/<file>`)."""
    return matpac_cache() / "releases" / urllib.parse.unquote(relpath)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def release_base() -> str:
    base = os.environ.get("MATPAC_RELEASE_URL") or load_registry().release_base
    return base if base.endswith("/") else base + "/"


# ---------------------------------------------------------------- checksums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _records_path() -> Path:
    return matpac_cache() / "sha256.json"


def recorded_hashes() -> dict[str, str]:
    try:
        return json.loads(_records_path().read_text())
    except (OSError, ValueError):
        return {}


def _record(key: str, digest: str) -> None:
    records = recorded_hashes()
    records[key] = digest
    path = _records_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
    os.replace(tmp, path)


def verify(path: Path, key: str, expected: str | None, fetch_hint: str) -> str:
    """Hash `path`; compare with the pinned hash, else the one recorded at first download."""
    digest = sha256_of(path)
    want = expected or recorded_hashes().get(key)
    if want and want.lower() != digest:
        raise ChecksumError(
            f"checksum mismatch for {path.resolve()} (sha256 {digest[:12]}..., expected {want[:12]}...): "
            f"refusing to load it; run `{fetch_hint} --force` to fetch it again"
        )
    if not want:
        _record(key, digest)
    return digest


# ---------------------------------------------------------------- sources


def _hub_download(repo: str, revision: str | None, progress: bool, force: bool = False) -> tuple[Path, str]:
    """Pick the weights file of a Hub repo and fetch it into the HF cache."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    endpoint = os.environ.get("HF_ENDPOINT") or None
    (enable_progress_bars if progress else disable_progress_bars)()
    if offline():
        folder = Path(
            snapshot_download(
                repo, revision=revision, cache_dir=hub_cache(), local_files_only=True,
                allow_patterns=[f"*{s}" for s in WEIGHT_SUFFIXES],
            )
        )
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        return folder / pick_weights_file(files, repo), f"hub:{repo}@{folder.name}"
    files = HfApi(endpoint=endpoint).list_repo_files(repo, revision=revision)
    filename = pick_weights_file(files, repo)
    local = Path(
        hf_hub_download(repo, filename, revision=revision, cache_dir=hub_cache(), endpoint=endpoint,
                        force_download=force)
    )
    commit = local.parents[len(Path(filename).parts) - 1].name  # snapshots/<commit>/<filename>
    return local, f"hub:{repo}@{commit}"


def pick_weights_file(files: list[str], repo: str) -> str:
    """Prefer safetensors, then a PyTorch file; refuse a repo with none."""
    for suffix in WEIGHT_SUFFIXES:
        hits = sorted(f for f in files if f.endswith(suffix) and not f.startswith("."))
        if hits:
            return min(hits, key=lambda f: (f.count("/"), f))
    raise WeightsError(f"Hub repo {repo} has no weights file (looked for {', '.join(WEIGHT_SUFFIXES)})")


def release_download(relpath: str, progress: bool, force: bool = False) -> tuple[Path, str]:
    """Fetch `release_base()/relpath` into the cache, resuming a partial download."""
    url = release_base() + relpath
    dest = release_path(relpath)
    if dest.exists() and not force:
        return dest, f"release:{url}"
    if offline():
        raise WeightsError(f"{dest.name} is not in the cache and HF_HUB_OFFLINE is set")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if force and part.exists():
        part.unlink()
    try:
        _stream(url, part, progress)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"cannot download {url}: {reason}; run again to resume") from None
    os.replace(part, dest)
    return dest, f"release:{url}"


def _stream(url: str, part: Path, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part is already whole (killed before the rename)
            return
        raise
    with resp:
        if have and resp.status != 206:  # server ignored the range: start over
            have = 0
        total = resp.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        from tqdm.auto import tqdm

        with open(part, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5],
            disable=not progress, leave=False,
        ) as bar:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes; run again to resume")


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
        path, source = _guard(lambda: _hub_download(repo, revision, progress, force), spec)
        return Resolved(spec, path, source, verify(path, source, None, fetch_hint(spec)))
    registry = load_registry()
    if spec in registry.models:
        return _resolve_registered(registry.models[spec], progress, force)
    path = Path(spec).expanduser()
    if path.is_file():
        return Resolved(spec, path, "file", sha256_of(path))
    if path.suffix in WEIGHT_SUFFIXES or os.sep in spec:
        raise ModelError(f"model file {spec} does not exist")
    raise ModelError(
        f"unknown model {spec!r}; use a registry name ({', '.join(registry.models)}), "
        "a checkpoint file, or hf:OWNER/REPO[@REVISION]"
    )


def _resolve_registered(m: ModelSpec, progress: bool, force: bool) -> Resolved:
    """Hub first, then the release; the error lists why each source failed."""
    errors: list[str] = []
    attempts: list[tuple[str, Callable[[], tuple[Path, str]]]] = []
    if m.hub:
        attempts.append(("Hub", lambda: _hub_download(m.hub, m.revision, progress, force)))
    if m.release:
        attempts.append(("release", lambda: release_download(m.release, progress, force)))
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
            errors.append(f"{label}: {exc}")
    if offline():
        raise WeightsError(
            f"model {m.name} is not in the cache and HF_HUB_OFFLINE is set; "
            f"run `{fetch_hint(m.name)}` with network access first"
        )
    raise WeightsError(f"cannot get model {m.name}: " + "; ".join(errors))


def _guard(attempt: Callable[[], tuple[Path, str]], name: str) -> tuple[Path, str]:
    """Turn huggingface_hub's exceptions into one-line WeightsErrors."""
    from huggingface_hub import errors as hf_errors

    try:
        return attempt()
    except hf_errors.LocalEntryNotFoundError:
        raise WeightsError(
            f"{name} is not in the cache and HF_HUB_OFFLINE is set; "
            f"run `{fetch_hint(name)}` with network access first"
        ) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
        raise WeightsError(f"{name}: {type(exc).__name__}") from None
    except hf_errors.HfHubHTTPError as exc:
        raise WeightsError(f"{name}: {str(exc).splitlines()[0]}") from None
    except (WeightsError, ModelError):
        raise
    except Exception as exc:  # noqa: BLE001 - proxies, captive portals, dropped connections
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise WeightsError(f"{name}: {detail}") from None


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


# ---------------------------------------------------------------- loading


def check_encoder_keys(state: dict, where: str) -> None:
    """Full strict key and shape check without allocating the model (meta device)."""
    import torch

    from matpac_cli.config import EncoderDims
    from matpac_cli.heads import split_head_keys
    from matpac_cli.model import MatpacEncoder, check_state_dict

    enc, _ = split_head_keys(state)
    with torch.device("meta"):
        model = MatpacEncoder(EncoderDims.from_state_dict(enc))
    try:
        check_state_dict(model, enc)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None


def load_checkpoint(path: Path) -> dict:
    """Read a state dict safely and map it onto the release layout (spec section 6)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise ModelError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict) and "cls_token" not in raw:
            raw = raw[wrapper]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelError(f"{path} is not a flat state dict of tensors")
    return map_keys(raw, str(path))


def map_keys(sd: dict, where: str) -> dict:
    """Strip a wrapper prefix (`model.`, `encoder.` ...) so keys match the release layout."""
    cls_keys = [k for k in sd if k == "cls_token" or k.endswith(".cls_token")]
    if len(cls_keys) != 1:
        found = ", ".join(list(sd)[:6])
        raise ModelError(f"{where}: cannot find the encoder's cls_token (keys: {found} ...)")
    prefix = cls_keys[0][: -len("cls_token")]
    out = {}
    for key, value in sd.items():
        if prefix and not key.startswith(prefix):
            if key.startswith(("head.", "head_norm.")):
                out[key] = value
                continue
            raise ModelError(f"{where}: key {key!r} is outside the encoder prefix {prefix!r}")
        out[key[len(prefix):]] = value
    if any(k.startswith("blocks.") for k in out) and not any(k.startswith("student_encoder.") for k in out):
        out = {
            ("student_encoder." + k if k.startswith(("blocks.", "norm.")) else k): v
            for k, v in out.items()
        }
    return out
