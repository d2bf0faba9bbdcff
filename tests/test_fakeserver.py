"""The fake server works with the real huggingface_hub and plain urllib (no mocks)."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fakeserver import FakeServer, patch_hub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

REPO = "someone/matpac"
DATA = bytes(range(256)) * 40


@pytest.fixture
def hub(server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    patch_hub(monkeypatch, server.url, tmp_path)
    server.add_hub_file(REPO, "weights/model.pt", DATA)
    server.add_hub_file(REPO, "README.md", b"hello")
    return server


def test_download_then_offline_cache_hit(hub: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = FakeServer.commit_for(REPO, "main")
    path = hf_hub_download(REPO, "weights/model.pt", revision="main", cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == DATA
    assert f"snapshots/{commit}/" in Path(path).as_posix()
    assert hub.count("HEAD", "/resolve/main/weights/model.pt") == 1
    assert hub.count("GET", "/resolve/") == 1

    before = len(hub.requests)
    patch_hub(monkeypatch, hub.url, tmp_path, offline=True)
    again = hf_hub_download(REPO, "weights/model.pt", revision="main", cache_dir=tmp_path / "c")
    assert again == path
    assert len(hub.requests) == before


def test_default_cache_and_commit_revision(hub: FakeServer, tmp_path: Path) -> None:
    commit = FakeServer.commit_for(REPO, "main")
    path = hf_hub_download(REPO, "README.md", revision=commit)
    assert Path(path).is_relative_to(tmp_path / "hub")
    assert Path(path).read_bytes() == b"hello"


def test_list_files_and_snapshot(hub: FakeServer, tmp_path: Path) -> None:
    assert sorted(HfApi().list_repo_files(REPO, revision="main")) == ["README.md", "weights/model.pt"]
    assert [f.path for f in HfApi().list_repo_tree(REPO)] == ["README.md", "weights"]
    folder = Path(snapshot_download(REPO, cache_dir=tmp_path / "s"))
    assert (folder / "weights/model.pt").read_bytes() == DATA
    assert hub.count("GET", "/api/models/someone/matpac/tree/") >= 1


def test_missing_file_and_repo(hub: FakeServer, tmp_path: Path) -> None:
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.pt", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("someone/missing", "x.pt", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().list_repo_files("someone/missing")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(hub.url + "/api/whatever")
    assert err.value.code == 404


def test_release_range_head_and_quoting(server: FakeServer) -> None:
    url = server.add_release_file("MATPAC%2B%2B/x.pt", DATA)
    assert url == server.url + "/MATPAC%2B%2B/x.pt"
    for u in (url, server.url + "/MATPAC++/x.pt"):
        with urllib.request.urlopen(u) as resp:
            assert resp.status == 200 and resp.read() == DATA
    head = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(head) as resp:
        assert resp.headers["Content-Length"] == str(len(DATA))
        assert resp.headers["Accept-Ranges"] == "bytes"
    req = urllib.request.Request(url, headers={"Range": "bytes=1000-"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 1000-{len(DATA) - 1}/{len(DATA)}"
        assert resp.read() == DATA[1000:]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "/Initial_release/none.pt")
    assert err.value.code == 404
    assert server.count("GET", "MATPAC") == 3 and server.count("HEAD") == 1


def test_fail_after_bytes_truncates_first_get_only(server: FakeServer) -> None:
    url = server.add_release_file("Initial_release/matpac_10_2048.pt", DATA)
    server.fail_after_bytes["Initial_release/matpac_10_2048.pt"] = 500
    with urllib.request.urlopen(url) as resp:
        with pytest.raises(http.client.IncompleteRead) as err:
            resp.read()
    assert err.value.partial == DATA[:500]
    assert server.fail_after_bytes == {}
    req = urllib.request.Request(url, headers={"Range": "bytes=500-"})
    with urllib.request.urlopen(req) as resp:
        assert DATA[:500] + resp.read() == DATA
