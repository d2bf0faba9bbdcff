"""Where weights live and how they arrive: the Hugging Face cache, the Hub, release files over
plain HTTP (resumable), recorded sha256s, and telling a missing network from other failures.

Hub downloads go through `huggingface_hub` (HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE /
HF_ENDPOINT honoured); release files land in `$HF_HOME/matpac/releases`. Every file's sha256 is
checked against the registry, or against the hash recorded the first time it was fetched.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from matpac_cli.checkpoints.hashcache import file_sha256
from matpac_cli.checkpoints.registry import load_registry
from matpac_cli.errors import ChecksumError, WeightsError, one_line

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_TRUE = {"1", "true", "yes", "on"}
_HEX = re.compile(r"[0-9a-fA-F]{64}")  # a sha256 as recorded
PROBES_HINT = "matpac models download probes"
LOCAL_MODEL = "model=FILE with a local checkpoint"  # the way round a download, for messages (names `model`)


class Unreachable(WeightsError):
    """A request that never reached its server: no network, a DNS failure, a refused connection."""

    def __init__(self, host: str, why: str) -> None:
        super().__init__(f"cannot reach {host} ({why})")
        self.host = host
        self.why = why


class NoNetwork(WeightsError):
    """No source of a file could be reached; the message names the ways to work offline."""


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


def sha256_of(path: Path, fresh: bool = False) -> str:
    """sha256 of a weight file; re-hashed only when its stat stamp changed (see hashcache)."""
    return file_sha256(path, matpac_cache() / "hash-cache.json", fresh=fresh)


def _records_path() -> Path:
    return matpac_cache() / "sha256.json"


def recorded_hashes() -> dict[str, str]:
    """The hashes recorded at first download. A record file that is not what matpac writes (a
    JSON object of sha256 hex digests) is refused in one line, never obeyed in part nor
    silently replaced: the hashes it held would be lost."""
    path = _records_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        raise WeightsError(
            f"{path}: unreadable hash records ({_reason(exc)}); delete it to record "
            "the hashes again at the next download"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) and _HEX.fullmatch(v) for v in data.values()):
        raise WeightsError(
            f"{path}: damaged hash records (not a JSON object of sha256 digests); delete it "
            "to record the hashes again at the next download"
        )
    return data


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or one_line(exc)


def _record(key: str, digest: str) -> None:
    """Remember a first download's hash. A read-only shared cache (offline clusters) simply
    records nothing: the file is still checked against the registry where a hash is pinned."""
    records = recorded_hashes()
    records[key] = digest
    path = _records_path()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def verify(path: Path, key: str, expected: str | None, fetch_hint: str, fresh: bool = False) -> str:
    """Hash `path` (`fresh`: never from the hash cache); compare with the pinned hash, else the
    one recorded at first download."""
    digest = sha256_of(path, fresh=fresh)
    want = expected or recorded_hashes().get(key)
    if want and want.lower() != digest:
        raise ChecksumError(
            f"checksum mismatch for {path.resolve()} (sha256 {digest[:12]}..., expected {want[:12]}...): "
            f"refusing to load it; run `{fetch_hint} --force` to fetch it again"
        )
    if not want:
        _record(key, digest)
    return digest


# ---------------------------------------------------------------- connection failures

_NET_ERRNOS = {
    errno.ENETUNREACH: "network unreachable",
    errno.ENETDOWN: "network down",
    errno.EHOSTUNREACH: "host unreachable",
    errno.EHOSTDOWN: "host down",
}


def connection_failure(exc: BaseException | None) -> str | None:
    """Why a request never reached its server (DNS, refused, unreachable), or None.

    Walks the exception chain, so it sees through urllib's URLError and the Hub client's
    httpx ConnectError alike. TLS errors and failures after connecting are not counted.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, socket.gaierror):
            return "host name not resolved"
        if isinstance(exc, ssl.SSLError):
            return None
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, OSError) and exc.errno in _NET_ERRNOS:
            return _NET_ERRNOS[exc.errno]
        if type(exc).__name__ == "ConnectTimeout":  # httpx: no answer while connecting
            return "connection timed out"
        if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
            if isinstance(exc.reason, TimeoutError):  # urllib raises URLError only while connecting
                return "connection timed out"
            exc = exc.reason
            continue
        exc = exc.__cause__ or exc.__context__
    return None


def host_of(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def no_network(
    what: str, causes: list[Unreachable], fetch: str, local: str, settings: tuple[str, ...] = ()
) -> NoNetwork:
    """The one line shown when no source could be reached, with the ways to work offline."""
    reasons = list(dict.fromkeys(f"{c.host}: {c.why}" for c in causes))
    return NoNetwork(
        f"cannot download {what}: no network, or the server cannot be reached ({'; '.join(reasons)}); "
        f"to work without network use HF_HUB_OFFLINE=1 with a filled cache, {local}, "
        f"or run `{fetch}` on a connected machine and copy its HF_HOME here",
        settings=settings,
    )


# ---------------------------------------------------------------- sources


def hub_endpoint() -> str:
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_download(repo: str, revision: str | None, progress: bool, force: bool = False) -> tuple[Path, str]:
    """Pick the weights file of a Hub repo and fetch it into the HF cache."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    endpoint = hub_endpoint()
    (enable_progress_bars if progress else disable_progress_bars)()
    if offline():
        folder = Path(
            snapshot_download(
                repo,
                revision=revision,
                cache_dir=hub_cache(),
                local_files_only=True,
                allow_patterns=[f"*{s}" for s in WEIGHT_SUFFIXES],
            )
        )
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        return folder / pick_weights_file(files, repo), f"hub:{repo}@{folder.name}"
    # model_info is one request; list_repo_files would retry a refused connection for 27 s
    siblings = HfApi(endpoint=endpoint).model_info(repo, revision=revision).siblings or []
    files = [s.rfilename for s in siblings]
    filename = pick_weights_file(files, repo)
    local = Path(
        hf_hub_download(
            repo, filename, revision=revision, cache_dir=hub_cache(), endpoint=endpoint, force_download=force
        )
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


def release_download(relpath: str, progress: bool, force: bool = False, hint: str | None = None) -> tuple[Path, str]:
    """Fetch `release_base()/relpath` into the cache, resuming a partial download.

    `hint` is the command that fetches the file, named when HF_HUB_OFFLINE keeps it out.
    Raises Unreachable when the host cannot be reached at all.
    """
    url = release_base() + relpath
    dest = release_path(relpath)
    if dest.exists() and not force:
        return dest, f"release:{url}"
    if offline():
        todo = f"; run `{hint}` with network access first" if hint else ""
        raise WeightsError(f"{dest.name} is not in the cache and HF_HUB_OFFLINE is set{todo}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if force and part.exists():
        part.unlink()
    had = part.stat().st_size if part.exists() else 0
    try:
        _stream(url, part, progress)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        got = part.stat().st_size if part.exists() else 0
        raise _download_error(url, exc, got - had if got >= had else got) from None
    os.replace(part, dest)
    return dest, f"release:{url}"


def _download_error(url: str, exc: BaseException, received: int) -> WeightsError:
    """Cut part-way: resumable; never connected: Unreachable; else the server's reason."""
    reason = getattr(exc, "reason", None) or exc
    if received > 0:
        return WeightsError(f"download of {url} was cut after {received} bytes ({reason}); run again to resume")
    why = connection_failure(exc)
    if why:
        return Unreachable(host_of(url), why)
    return WeightsError(f"cannot download {url}: {reason}")


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

        with (
            open(part, "ab" if have else "wb") as out,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=part.name[:-5],
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")
