"""The sha256 cache: an unchanged weight file is not hashed again; any change to its size, mtime,
ctime (content rewritten, mtime put back) or identity is, so a changed file is never loaded
under its old hash. `models verify` always re-hashes."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from matpac_cli.checkpoints import hashcache


@pytest.fixture()
def counted(monkeypatch):
    calls = []
    real = hashcache._hash

    def spy(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(hashcache, "_hash", spy)
    return calls


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unchanged_file_is_hashed_once(tmp_path, counted):
    f, cache = tmp_path / "w.pt", tmp_path / "cache.json"
    f.write_bytes(b"a" * 5000)
    assert hashcache.file_sha256(f, cache) == _sha(f)
    assert hashcache.file_sha256(f, cache) == _sha(f)
    assert hashcache.file_sha256(tmp_path / "." / "w.pt", cache) == _sha(f)  # same real path
    assert len(counted) == 1


@pytest.mark.parametrize("change", ["size", "mtime", "content_same_mtime", "replaced"])
def test_changed_file_is_hashed_again(tmp_path, counted, change):
    f, cache = tmp_path / "w.pt", tmp_path / "cache.json"
    f.write_bytes(b"a" * 5000)
    hashcache.file_sha256(f, cache)
    st = os.stat(f)
    time.sleep(0.01)
    if change == "size":
        f.write_bytes(b"a" * 5001)
    elif change == "mtime":
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "content_same_mtime":  # same size, mtime put back: only ctime tells
        with open(f, "r+b") as fh:
            fh.write(b"b")
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(f).st_mtime_ns == st.st_mtime_ns and os.stat(f).st_size == st.st_size
    else:  # another file moved into place (new inode)
        other = tmp_path / "other.pt"
        other.write_bytes(b"c" * 5000)
        os.replace(other, f)
    assert hashcache.file_sha256(f, cache) == _sha(f)
    assert len(counted) == 2


def test_fresh_always_hashes_and_readonly_cache_still_answers(tmp_path, counted):
    f = tmp_path / "w.pt"
    f.write_bytes(b"x" * 100)
    cache = tmp_path / "ro" / "cache.json"
    assert hashcache.file_sha256(f, cache) == _sha(f)
    assert hashcache.file_sha256(f, cache, fresh=True) == _sha(f)
    assert len(counted) == 2
    (tmp_path / "ro").chmod(0o500)
    try:
        f.write_bytes(b"y" * 100)
        assert hashcache.file_sha256(f, cache) == _sha(f)  # answered, nothing remembered
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_resolve_reuses_hash_and_refuses_a_rewritten_release_file(hub, counted):
    """Through the real download code: resolving again does not re-hash the cached checkpoint;
    rotting one byte in place with the mtime put back is still caught and refused."""
    import io

    import torch
    from reference import make_checkpoint

    from matpac_cli.checkpoints import resolve as W
    from matpac_cli.errors import ChecksumError

    buf = io.BytesIO()
    torch.save(make_checkpoint(width=128, depth=2, n_t=608, seed=11), buf)
    hub.add_release_file("MATPAC%2B%2B/matpac_plus_6s_2048_enconly.pt", buf.getvalue())
    first = W.resolve("matpac-plus")
    hashed = len(counted)
    second = W.resolve("matpac-plus")
    assert second.sha256 == first.sha256 and len(counted) == hashed  # no second hash
    st = os.stat(first.path)
    with open(first.path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 1]))
    os.utime(first.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        W.resolve("matpac-plus")


# ------------------------------------------------- a forged entry (issue 20): ignored, not obeyed


def _forge(cache, f, mode=0o600) -> str:
    """An entry for `f` with its current stamp and a digest that is not its own."""
    fake = hashlib.sha256(b"another checkpoint").hexdigest()
    st = os.stat(f)
    cache.write_text(
        json.dumps({os.path.realpath(f): [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, fake]})
    )
    cache.chmod(mode)
    return fake


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_forged_entry_in_a_cache_others_may_write_is_ignored(tmp_path, counted, mode):
    f, cache = tmp_path / "w.pt", tmp_path / "cache.json"
    f.write_bytes(b"a" * 5000)
    fake = _forge(cache, f, mode)
    assert hashcache.file_sha256(f, cache) == _sha(f) != fake
    assert len(counted) == 1
    # the cache it rewrote is this user's alone, and from now on answers
    assert os.stat(cache).st_mode & 0o077 == 0
    assert hashcache.file_sha256(f, cache) == _sha(f) and len(counted) == 1


def test_a_symlinked_cache_is_neither_read_nor_written_through(tmp_path, counted):
    f, cache = tmp_path / "w.pt", tmp_path / "cache.json"
    f.write_bytes(b"a" * 5000)
    elsewhere = tmp_path / "planted.json"
    fake = _forge(elsewhere, f)
    before = elsewhere.read_bytes()
    cache.symlink_to(elsewhere)
    assert hashcache.file_sha256(f, cache) == _sha(f) != fake
    assert elsewhere.read_bytes() == before  # not written through the link
    assert not cache.is_symlink()  # replaced by matpac's own file


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_forged_entry_in_another_users_cache_is_ignored(tmp_path, counted):
    f, cache = tmp_path / "w.pt", tmp_path / "cache.json"
    f.write_bytes(b"a" * 5000)
    fake = _forge(cache, f)
    os.chown(cache, 65534, 65534)
    assert hashcache.file_sha256(f, cache) == _sha(f) != fake


@pytest.mark.parametrize("digest", ["not-a-digest", 12345, "A" * 64])
def test_a_malformed_entry_is_ignored(tmp_path, counted, digest):
    f, cache = tmp_path / "w.pt", tmp_path / "cache.json"
    f.write_bytes(b"a" * 5000)
    st = os.stat(f)
    cache.write_text(
        json.dumps({os.path.realpath(f): [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, digest]})
    )
    cache.chmod(0o600)
    assert hashcache.file_sha256(f, cache) == _sha(f)
    assert len(counted) == 1
