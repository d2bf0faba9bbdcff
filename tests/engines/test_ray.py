"""`--engine ray` on a real Ray cluster on this machine (loopback only: 127.0.0.2 and 127.0.0.3).

The same commands as the local engine give the same numbers, name bad files, exit 1 on them,
survive a killed actor and a lost node, and resume. The cluster is ours: started here, stopped by
its own processes (tests/raycluster.py), never `ray stop`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ray.data")

from conftest import library_files, run_matpac, write_audio
from raycluster import ENV, Node, cluster_cpus, processes_with

pytestmark = pytest.mark.slow  # starts Ray clusters: minutes


@pytest.fixture(scope="module")
def head():
    node = Node("127.0.0.2")
    yield node
    node.cleanup()


@pytest.fixture()
def ray_env(head) -> dict:
    return {**ENV, "RAY_ADDRESS": head.address}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Six files at three rates and lengths (one with a short last chunk), and a broken one."""
    d = tmp_path_factory.mktemp("clips")
    for i, (seconds, sr, ch) in enumerate(
        [(3, 16000, 1), (8.5, 44100, 2), (2, 22050, 1), (13, 48000, 2), (0.9, 16000, 1), (6.2, 32000, 1)]
    ):
        write_audio(d / f"c{i}.wav", seconds, sr=sr, channels=ch, seed=i)
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return d


def _embeddings(npy: Path) -> dict[str, np.ndarray]:
    matrix = np.load(npy)
    with open(npy.with_suffix(".csv"), newline="") as fh:
        return {row["path"]: matrix[int(row["row"])] for row in csv.DictReader(fh)}


def _paths(npy: Path) -> list[str]:
    with open(npy.with_suffix(".csv"), newline="") as fh:
        return [row["path"] for row in csv.DictReader(fh)]


def _local(clips: Path, tiny: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The local engine's numbers, encoded apart from the library (which would hand the Ray run
    every file without a task on the cluster)."""
    return run_matpac(["embed", str(clips), "--model", str(tiny), "--out", str(out), "-q", "--no-library", *extra])


def test_ray_embed_gives_the_local_numbers_names_the_bad_file_and_exits_1(ckpts, clips, tmp_path, ray_env):
    tiny = ckpts["tiny608"]
    local = _local(clips, tiny, tmp_path / "local.npy")
    assert local.returncode == 1, local.stderr
    proc = run_matpac(
        [
            "embed",
            str(clips),
            "--model",
            str(tiny),
            "--out",
            str(tmp_path / "ray.parquet"),
            "--engine",
            "ray",
            "--failures",
            str(tmp_path / "failed.csv"),
        ],
        env=ray_env,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert f"matpac: skipped {clips}/broken.wav: cannot decode" in err
    assert "Traceback" not in err and "core_worker" not in err, err
    assert "6 done, 0 reused, 1 failed" in err and "on cpu, fp32" in err, err
    import pandas as pd
    import pyarrow.parquet as pq

    a = _embeddings(tmp_path / "local.npy")
    table = pq.read_table(tmp_path / "ray.parquet")  # plain pyarrow and pandas read it, no Ray
    assert table.column_names == ["path", "duration_s", "sample_rate", "channels", "embedding"]
    frame = pd.read_parquet(tmp_path / "ray.parquet")
    assert sorted(frame["path"]) == sorted(a) and len(frame) == 6
    for path, vector in zip(table.column("path").to_pylist(), table.column("embedding").to_pylist()):
        np.testing.assert_allclose(np.asarray(vector, dtype=np.float32), a[path], atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "ray.manifest.json").read_text())["host"]["role"] == "ray driver"
    assert "bf16 in hardware" not in err  # the actors ran on the cluster's CPUs: none of this one's advice
    assert "broken.wav" in (tmp_path / "failed.csv").read_text()


def _probe(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    torch.save({"weight": torch.randn(20, 640, generator=g), "bias": torch.randn(20, generator=g)}, path)
    return path


def test_a_file_that_kills_its_decoder_every_time_is_its_error_and_stdout_stays_data(ckpts, clips, tmp_path, ray_env):
    """The worker decoding c2.wav dies on every try (MATPAC_TEST_CRASH_ON with MATPAC_TEST_HOOKS=1,
    a test-only hook: the task SIGKILLs its own process, as a segfault or an OOM kill would). Ray would retry it for
    ever; matpac gives up after 3 deaths, names the file and finishes the others. Ray's notices
    of the deaths ("(raylet) A worker died ...") never reach stdout, which carries the CSV only. The
    library records the file as failed: a re-run skips it in one line until `--retry-failed`."""
    tag = ["tag", str(clips), "--model", str(ckpts["tiny608"]), "--head", str(_probe(tmp_path / "openmic.pth"))]
    proc = run_matpac(
        [*tag, "--out", "-", "--engine", "ray", "--failures", str(tmp_path / "failed.csv")],
        env={**ray_env, "MATPAC_TEST_CRASH_ON": "c2.wav", "MATPAC_TEST_HOOKS": "1"},
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    skipped = [line for line in err.splitlines() if "c2.wav" in line]
    assert skipped == [
        f"matpac: skipped {clips}/c2.wav: the Ray worker decoding it died 3 times "
        "(a crash, or killed for memory?); matpac gave up on it"
    ], err
    assert "5 done, 0 reused, 2 failed" in err and "; 3 task retries" in err, err
    assert "Traceback" not in err, err
    assert "c2.wav" in (tmp_path / "failed.csv").read_text()
    lines = proc.stdout.decode().splitlines()
    rows = list(csv.reader(lines))
    assert rows[0][0] == "path" and all(len(row) == len(rows[0]) for row in rows), lines
    good = {str(p) for p in clips.glob("c*.wav") if p.name != "c2.wav"}
    assert {row[0] for row in rows[1:]} == good, lines
    # the library recorded it: a re-run (the local engine here) skips it in one line, exit 1 still
    rerun = run_matpac([*tag, "--out", str(tmp_path / "t.csv")], env=ray_env)
    err = rerun.stderr.decode()
    assert rerun.returncode == 1, err
    assert [line for line in err.splitlines() if "c2.wav" in line] == [
        f"matpac: skipped {clips}/c2.wav: failed before: the Ray worker decoding it died 3 times "
        "(a crash, or killed for memory?); matpac gave up on it; --retry-failed tries it again"
    ], err
    assert "0 done, 5 reused, 2 failed" in err, err
    retried = run_matpac([*tag, "--out", str(tmp_path / "t.csv"), "--retry-failed"], env=ray_env)
    assert retried.returncode == 1 and "1 done, 5 reused, 1 failed" in retried.stderr.decode(), retried.stderr
    assert "c2.wav" in (tmp_path / "t.csv").read_text()


def test_ray_tag_gives_the_local_scores(ckpts, clips, tmp_path, ray_env):
    probe = _probe(tmp_path / "openmic.pth")
    args = [
        "tag",
        str(clips),
        "--model",
        str(ckpts["tiny608"]),
        "--head",
        str(probe),
        "--top-k",
        "0",
        "--segments",
        "-q",
    ]
    local = run_matpac([*args, "--out", str(tmp_path / "local.csv"), "--no-library"])
    remote = run_matpac([*args, "--out", str(tmp_path / "ray.csv"), "--engine", "ray"], env=ray_env)
    assert local.returncode == remote.returncode == 1, remote.stderr
    import pandas as pd

    a = pd.read_csv(tmp_path / "local.csv").sort_values(["path", "start_s", "label"]).reset_index(drop=True)
    b = pd.read_csv(tmp_path / "ray.csv").sort_values(["path", "start_s", "label"]).reset_index(drop=True)
    assert len(a) == len(b) > 0
    assert (a["path"] == b["path"]).all() and (a["label"] == b["label"]).all()
    np.testing.assert_allclose(b["score"], a["score"], atol=1e-5)


def test_ray_run_resumes_from_the_library(ckpts, clips, tmp_path, ray_env):
    out = tmp_path / "emb.npy"
    first = run_matpac(
        ["embed", str(clips), "--model", str(ckpts["tiny608"]), "--out", str(out), "--engine", "ray", "--ext", "wav"],
        env=ray_env,
    )
    assert first.returncode == 1
    write_audio(clips.parent / "more" / "new.wav", 2.5, seed=9)
    again = run_matpac(
        [
            "embed",
            str(clips),
            str(clips.parent / "more"),
            "--model",
            str(ckpts["tiny608"]),
            "--out",
            str(out),
            "--engine",
            "ray",
        ],
        env=ray_env,
    )
    err = again.stderr.decode()
    assert "1 done, 6 reused, 1 failed" in err, err
    assert len(_embeddings(out)) == 7
    assert "Warning" not in err, err  # fewer files than decoders: none of Ray Data's notices about it


def _many(folder: Path, n: int) -> Path:
    for i in range(n):
        write_audio(folder / f"m{i:02d}.wav", 10, sr=16000, seed=100 + i)
    return folder


def _wait_for(what, timeout: float = 120.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(step)
    raise TimeoutError("waited too long")


def _kill_one(node: Node, title: str) -> bool:
    """SIGKILL one live process of `node` whose title ends with `title` (an idle actor of the
    running job: `ray::MapWorker(MapBatches(Encoder))`)."""
    for pid in node.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if cmd.strip().endswith(title):
                os.kill(pid, signal.SIGKILL)
                return True
        except (OSError, ProcessLookupError):
            continue
    return False


def _background(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "matpac_cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("when", ["busy", "idle"])
def test_a_killed_actor_costs_nothing_every_row_exactly_once(ckpts, head, tmp_path, ray_env, when):
    """The encoder actor is killed mid-job, while it encodes a batch (Ray Data sees that task fail)
    or while it waits for work: the last file's decoding is held (MATPAC_TEST_HOLD_ON) until the
    others are done, so the actor is idle with no task in flight. Ray Data then counted the dead
    actor in its pool and waited for it for ever (the CI run that timed out), until matpac's watch
    on the round's actors (engines.ray.watch) ended the round, so the files left run again. Busy:
    each actor's calls from its second on wait (MATPAC_TEST_HOLD_ENCODING), naming their process,
    so the kill lands mid-call (catching a tiny model's millisecond calls by their process titles
    missed them for 120 s in three CI runs of a loaded host)."""
    folder = _many(tmp_path / "many", 16)
    out, go = tmp_path / "emb.npy", tmp_path / "go"
    held = {"MATPAC_TEST_HOLD_ON": f"m15.wav:{go}"} if when == "idle" else {"MATPAC_TEST_HOLD_ENCODING": f"2:{go}"}
    hold = {"MATPAC_TEST_HOOKS": "1", **held}
    job = _background(
        [
            "embed",
            str(folder),
            "--model",
            str(ckpts["tiny608"]),
            "--out",
            str(out),
            "--engine",
            "ray",
            "-q",
            "--batch-size",
            "2",
        ],
        {**ray_env, **hold},
    )
    try:
        if when == "busy":
            busy = _wait_for(lambda: sorted(tmp_path.glob("go.*")))  # an actor mid-call, past its first
            os.kill(int(busy[0].suffix[1:]), signal.SIGKILL)
            go.touch()
        else:
            # all but the held file, and the one whose last chunk waits in a part-filled batch
            _wait_for(lambda: library_files() >= 14)
            time.sleep(2.0)  # the actor's last batch is done: it waits, with no task in flight
            assert _kill_one(head, "MapBatches(Encoder))"), "no idle encoder actor"
            go.touch()
        killed = time.monotonic()
        assert job.poll() is None and library_files() < 16, "the job ended before the kill"
        _, err = job.communicate(timeout=120)  # Ray Data's no-progress guard (300 s) must not be what ends it
        print(f"the job ended {time.monotonic() - killed:.0f} s after the kill")
    finally:
        go.touch()
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err.decode()
    assert sorted(_paths(out)) == sorted(str(p) for p in folder.glob("*.wav"))  # each once, none lost
    local = _local(folder, ckpts["tiny608"], tmp_path / "local.npy")
    assert local.returncode == 0
    a, b = _embeddings(tmp_path / "local.npy"), _embeddings(out)
    for path in a:
        np.testing.assert_allclose(b[path], a[path], atol=1e-5, rtol=0)


def test_a_second_node_takes_work_and_losing_it_mid_job_loses_no_file(ckpts, head, tmp_path, ray_env):
    """The second node is the bigger one (6 CPUs to the head's 2) and each encoder actor takes 2
    CPUs (--threads 2), so when that node is lost mid-job Ray would restart its actors on a head
    with room for one: it takes both CPUs, the others restart for ever holding their batches, and
    the files still to decode never can be (this test hung at its timeout, 5 of 16 files done;
    ray-project/ray#44687). matpac's actors are never restarted: a lost one ends its round at
    once and the files left run again on a pool that fits the cluster now, well before the
    no-progress backstop (MATPAC_RAY_STALL_S, 300 s, left as it is) would have to act."""
    node = Node("127.0.0.3", head=head.address, cpus=6)
    try:
        # registered, not just started: a job started before sizes its pool for the head alone, and
        # no actor ever runs on the node (the CI run that timed out waiting for one)
        _wait_for(lambda: cluster_cpus(head.address) >= 8, timeout=90, step=0.5)
        folder = _many(tmp_path / "many", 32)
        out, go = tmp_path / "emb.npy", tmp_path / "go"
        # the last file's decoding waits until the node is lost, so the job cannot be done by then
        # (decoding tasks of one file each finished the job first in 2 runs of 5)
        hold = {"MATPAC_TEST_HOOKS": "1", "MATPAC_TEST_HOLD_ON": f"m31.wav:{go}"}
        job = _background(
            [
                "embed",
                str(folder),
                "--model",
                str(ckpts["tiny608"]),
                "--out",
                str(out),
                "--engine",
                "ray",
                "--batch-size",
                "2",
                "--threads",
                "2",
            ],
            {**ray_env, **hold},
        )
        try:
            # an encoder actor on the node (its decoding tasks may all be done by now): losing it
            # loses work (the pool starts whole, so one is placed there once the head is full)
            working = lambda: [p for p in node.pids() if p in processes_with("MapBatches(Encoder)")]  # noqa: E731
            _wait_for(lambda: job.poll() is not None or (working() and library_files() >= 1))
            node.stop(hard=True)  # the whole node, mid-job
            lost = time.monotonic()
            go.touch()
            assert job.poll() is None, f"the job ended before the node was lost: {job.communicate()[1].decode()}"
            _, err = job.communicate(timeout=280)  # the stall backstop (300 s) must not be what ends it
            print(f"the job ended {time.monotonic() - lost:.0f} s after the node was lost")
        finally:
            go.touch()
            if job.poll() is None:
                job.kill()
        err = err.decode()
        assert job.returncode == 0, err
        assert sorted(_paths(out)) == sorted(str(p) for p in folder.glob("*.wav"))
        assert "made no progress" not in err, err  # the hang is prevented, not waited out
        assert "task retries (work rerun after a Ray worker or node was lost)" in err, err
    finally:
        node.cleanup()


def test_an_unreachable_cluster_is_one_line_at_once(tmp_path, clips, ckpts):
    started = time.monotonic()
    proc = run_matpac(
        [
            "embed",
            str(clips),
            "--model",
            str(ckpts["tiny608"]),
            "--out",
            str(tmp_path / "e.npy"),
            "--engine",
            "ray",
            "--ray-address",
            "127.0.0.2:1",
        ],
        env=ENV,
    )
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and lines == [
        "matpac: error: cannot reach the Ray cluster at 127.0.0.2:1: Connection refused"
    ]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize(
    "reply, heard",
    [(b"HTTP/1.1 400 Bad Request\r\n\r\n", "it said 'HTTP/1.1 400 Bad Request'"), (None, "it said nothing in 5 s")],
    ids=["http", "silent"],
)
def test_a_port_that_is_not_ray_is_one_line_within_seconds(tmp_path, clips, ckpts, reply, heard):
    """An open port that is not a Ray GCS (a web server, one that says nothing): one line saying
    so, exit 2. Ray itself would retry it for 14 minutes (the timeout is a hang guard)."""
    server = socket.create_server(("127.0.0.2", 0))
    held = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                held.append(conn)
                if reply:
                    conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    address = f"127.0.0.2:{server.getsockname()[1]}"
    try:
        proc = run_matpac(
            [
                "embed",
                str(clips),
                "--model",
                str(ckpts["tiny608"]),
                "--out",
                str(tmp_path / "e.npy"),
                "--engine",
                "ray",
                "--ray-address",
                address,
            ],
            env=ENV,
            timeout=120,
        )
    finally:
        server.close()
        for conn in held:
            conn.close()
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and lines == [
        f"matpac: error: {address} answered but is not a Ray cluster (GCS): "
        f"{heard}; give the head's GCS port (6379 unless `ray start --head "
        "--port` chose another)"
    ], lines
    assert not (tmp_path / "e.npy").exists()


def test_without_ray_installed_the_engine_names_the_extra(tmp_path, clips, ckpts):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    proc = run_matpac(
        ["embed", str(clips), "--model", str(ckpts["tiny608"]), "--out", str(tmp_path / "e.npy"), "--engine", "ray"],
        env={"PYTHONPATH": str(fake.parent)},
    )
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == (
        "matpac: error: --engine ray needs Ray Data, an optional extra: pip install '.[ray]' in matpac's source folder"
    )


def test_a_round_lost_to_a_dead_actor_is_told_from_other_failures():
    """Ray Data fails a round whose encoder actor died (actors are not restarted): that, however
    deep in the exception's causes, is a round to run again; any other failure is the job's."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from matpac_cli.engines.ray.driver import _worker_lost

    try:
        try:
            raise ActorDiedError()
        except ActorDiedError as dead:
            raise RuntimeError("the dataset failed") from dead
    except RuntimeError as exc:
        assert _worker_lost(exc)
    task = RayTaskError("MapBatches(Encoder)", "trace", ActorDiedError())
    assert _worker_lost(task)
    assert not _worker_lost(ValueError("a bad batch")) and not _worker_lost(None)


LEDGER_FORGETS = """
import time
import ray
from ray.exceptions import ActorDiedError
from matpac_cli.engines.ray.ledger import Ledger

ray.init(logging_level="ERROR")

@ray.remote(num_cpus=0, max_restarts=0)
class Enlisted:
    def __init__(self, ledger):
        ledger.enlist()

ledger = Ledger.start()
view = ledger.for_round(1)
actor = Enlisted.remote(view)
ray.get(actor.__ray_ready__.remote())
deadline = time.monotonic() + 60
while not view.enlisted():  # its enlisting is sent, not waited on
    assert time.monotonic() < deadline, "the actor never enlisted"
    time.sleep(0.1)
ray.kill(ledger._handle, no_restart=False)  # the ledger restarts, its lists empty
deadline = time.monotonic() + 60
while True:  # until the restarted ledger answers (the kill is not instant)
    try:
        if ray.get(ledger._handle.enlisted_now.remote(1), timeout=30) == []:
            break
    except Exception:
        pass
    assert time.monotonic() < deadline, "the ledger did not restart"
    time.sleep(0.2)
view.dismiss()
deadline, state = time.monotonic() + 30, "alive"
while time.monotonic() < deadline:  # a kill takes effect soon, not at once
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=30)
    except ActorDiedError:
        state = "dismissed"
        break
    time.sleep(0.2)
print(state)
ledger.stop()
"""


def test_a_round_whose_ledger_restarted_still_stops_every_actor_it_had(head, ray_env, tmp_path):
    """The ledger (the tries and the round's encoder actors) lives in an actor that Ray restarts
    empty if its process dies. The lost round's actors must still be stopped, or they hold the
    CPUs that the next round needs and the job waits for ever (it hung so in CI when the ledger
    had been spilled to the node that was then lost): the driver keeps every actor it watched."""
    script = tmp_path / "forgets.py"
    script.write_text(LEDGER_FORGETS)
    env = {**os.environ, **ray_env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().split()[-1:] == ["dismissed"], proc.stderr.decode()[-3000:]


def test_the_driver_holds_a_file_s_facts_not_its_vectors_or_chunks(head, tmp_path, wide, ray_env):
    """Many tiny files through the cluster: the memory the driver holds (traced, through the
    Python API, in a process of its own: a Ray driver left in the test process crashed it once
    the cluster was gone) grows by each file's name and facts, not by its chunks (summed on the
    actors) nor its vector (the workers write it into the library: `engines.writes`). What the
    driver receives is under a kilobyte a file (a file's status and its share of a fragment's
    metadata; a 3840-value vector's sums were 31 KB), and the output, read back from the
    library, holds every file's vector."""
    for i in range(300):
        write_audio(tmp_path / "in" / f"f{i:03d}.wav", 0.2, seed=i)
    code = "\n".join(
        [
            "import sys",
            f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})",
            "from pathlib import Path",
            "from conftest import held_per_file",
            "from matpac_cli import Predictor, RunOptions",
            "from matpac_cli.jobs import embed",
            "from matpac_cli.library import store",
            "embed.SHED_FILES, store.COMMIT_MIN_S = 16, 0.0  # at this scale what 512 are at a catalogue's",
            f"model = Predictor.load({str(wide.resolved.path)!r}, device='cpu', precision='fp32')",
            f"options = RunOptions(batch_size=8, engine='ray', address={head.address!r})",
            f"t = Path({str(tmp_path)!r})",
            "summaries = []",
            "held = held_per_file(t / 'in', t / 'e.npy', model, t / 'lib', options, summaries)",
            "print(held, summaries[0].received / summaries[0].done)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **ray_env}, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    per_file, received = map(float, proc.stdout.decode().strip().splitlines()[-1].split())
    assert per_file < wide.dims.embed_dim * 4 / 3, f"{per_file:.0f} bytes a file (a vector: {wide.dims.embed_dim * 4})"
    assert 0 < received < 1024, f"the driver received {received:.0f} bytes a file"
    matrix = np.load(tmp_path / "e.npy")
    assert matrix.shape == (300, wide.dims.embed_dim) and np.isfinite(matrix).all() and (matrix != 0).any(axis=1).all()
    assert library_files(tmp_path / "lib") == 300 and not list(
        (tmp_path / "lib").glob(".matpac-ray-*")
    )  # the token went


@pytest.mark.parametrize("segments", [False, True], ids=["clips", "segments"])
def test_tag_s_files_are_stored_by_the_workers_and_scored_from_the_library(head, tmp_path, wide, ray_env, segments):
    """`tag` (clip scores, and with `segments` each chunk's) through the cluster with a library:
    the workers store each file's vector (and segments), the driver receives under a kilobyte a
    file (a vector's sums were 31 KB; a 3.5-minute track's segments, 571 KB) and scores the files
    from the library a batch at a time (`jobs.tag_score`): the rows are the local engine's, a
    short tail merged. Through the Python API, in a process of its own (as the embed test above)."""
    for i in range(300):  # with segments, one file in 30 of three chunks, its last one short
        write_audio(tmp_path / "in" / f"f{i:03d}.wav", 12.5 if segments and i % 30 == 0 else 0.2, seed=i)
    g = torch.Generator().manual_seed(0)
    width = wide.dims.embed_dim
    torch.save(
        # a trained head's scale (logits about 1, scores away from 0 and 1): N(0, 1) weights gave
        # logits of about 90, so the scores compared were mostly 0 or 1 and one of 6,000 moved by
        # 1.4e-5 (the float32 embeddings' noise, batched with other files' chunks, times 62)
        {"weight": torch.randn(20, width, generator=g) / width**0.5, "bias": torch.randn(20, generator=g)},
        tmp_path / "openmic.pth",
    )
    code = "\n".join(
        [
            "import io",
            "from pathlib import Path",
            "from matpac_cli import Predictor, RunOptions, TagConfig, discover, tag",
            "from matpac_cli.jobs import tag_score",
            "from matpac_cli.jobs.tag import Group, build_heads",
            "from matpac_cli.library import store",
            "tag_score.BATCH_FILES, tag_score.SEGMENT_FILES, store.COMMIT_MIN_S = 64, 16, 0.0  # at this scale",
            f"model = Predictor.load({str(wide.resolved.path)!r}, device='cpu', precision='fp32')",
            f"t = Path({str(tmp_path)!r})",
            "group = Group('wide', build_heads([str(t / 'openmic.pth')], model, None, False), model)",
            "items = discover([str(t / 'in')])",
            f"ray = RunOptions(batch_size=8, engine='ray', address={head.address!r})",
            f"s = tag(items, [group], TagConfig(top_k=0, segments={segments}, library=t / 'lib', options=ray),"
            " t / 'ray.csv', io.StringIO())",
            f"local = TagConfig(top_k=0, segments={segments}, library=False, options=RunOptions(batch_size=8, workers=1))",
            "tag(items, [group], local, t / 'local.csv', io.StringIO())",
            "print(s.done, s.received / s.done)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **ray_env}, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    done, received = map(float, proc.stdout.decode().strip().splitlines()[-1].split())
    assert done == 300 and 0 < received < 1024, f"the driver received {received:.0f} bytes a file"
    import pandas as pd

    a, b = pd.read_csv(tmp_path / "local.csv"), pd.read_csv(tmp_path / "ray.csv")
    assert len(a) == len(b) == 300 * 20 * (1 + segments) + 10 * 20 * segments  # a segment's rows each, or the clip's
    assert (a["path"] == b["path"]).all() and (a["label"] == b["label"]).all() and (a["rank"] == b["rank"]).all()
    np.testing.assert_allclose(b["score"], a["score"], atol=1e-5)
    for column in ("start_s", "end_s", "truncated") if segments else ():
        assert a[column].equals(b[column])
    assert library_files(tmp_path / "lib") == 300


def test_a_library_the_driver_cannot_make_its_token_in_is_one_warning_and_the_driver_stores(tmp_path):
    """The workers' token cannot be made (the library's folder is a file's path here): the run
    goes on with the driver storing every file, said once, instead of ending."""
    from matpac_cli.engines.ray.driver import _shared
    from matpac_cli.events import Listeners
    from matpac_cli.library.shards import Sink
    from matpac_cli.library.store import Library

    (tmp_path / "file").write_text("not a folder")
    heard: list[str] = []
    assert _shared(Sink(Library(tmp_path / "file" / "lib"), [], [], {}), Listeners(warning=heard.append)) is None
    assert len(heard) == 1 and "cannot write (Not a directory)" in heard[0] and "instead of the Ray workers" in heard[0]


MERGES = """
import json, os, sys, types
from pathlib import Path
from matpac_cli import Predictor, RunOptions, discover
from matpac_cli.events import Listeners
from matpac_cli.jobs import stored
from matpac_cli.library import tables
from matpac_cli.library.store import Library
from matpac_cli.pipeline.assemble import Plan
t, address, model = Path(sys.argv[1]), sys.argv[2], Predictor.load(sys.argv[3], device="cpu", precision="fp32")
library, done, said = Library(t / "lib"), [], []
options = RunOptions(batch_size=8, engine="ray", address=address)
stored.run(library, options, discover([str(t / "in")]), [Plan(model)], Listeners(warning=said.append), done.append, lean=[])
stored.close(library, types.SimpleNamespace())
clips = tables.open_table(library.root, "clips")
before = len(clips.checkout_version(clips.version - 1).get_fragments())  # the merge's is the last commit
rows = clips.to_table(columns=["key", "embedding"]).to_pydict()
sessions = [os.getsid(pid) for _, pid in library.merged.get("clips", [])]  # while the job's workers live
print(json.dumps({"driver": os.getpid(), "merged": library.merged, "sessions": sessions, "said": said, "before": before,
                  "done": len(done),
                  "stored": sum(r.stored for r in done), "after": len(clips.get_fragments()),
                  "keys": len(set(rows["key"])), "rows": len(rows["key"]),
                  "whole": all(len(v) == model.dims.embed_dim for v in rows["embedding"])}))
"""


def test_the_workers_merge_the_fragments_they_wrote_and_the_driver_commits(ckpts, head, tmp_path, ray_env):
    """The run's workers wrote a fragment per file (a small run): the end-of-run merge of them is
    rewritten by a process of the cluster's node, not the driver (`jobs.tidy`), and the library
    holds every file's row once, whole, in a few fragments."""
    for i in range(40):
        write_audio(tmp_path / "in" / f"f{i:02d}.wav", 0.3, seed=i)
    env = {**os.environ, **ray_env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", MERGES, str(tmp_path), head.address, str(ckpts["tiny608"])],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    got = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert got["done"] == got["stored"] == 40 and got["before"] > 16, got  # the workers wrote them
    where = got["merged"]["clips"]  # (host, pid) of each rewrite: a worker of the head node's `ray start`
    assert where and all(pid != got["driver"] for _, pid in where) and set(got["sessions"]) == {head.proc.pid}, got
    assert got["after"] < got["before"] // 4 and got["keys"] == got["rows"] == 40 and got["whole"], got
    assert got["said"] == [], got  # no warning: nothing fell back to the driver


ON_CLUSTER = """
import functools, json, os, signal, sys, threading, time
import ray
from matpac_cli.cli import _on_signal
from matpac_cli.cli._stdout import Stopped
from matpac_cli.engines.ray.tasks import on_cluster
ray.init(address=sys.argv[1], logging_level="ERROR")
nap = functools.partial(time.sleep, 120)
on_cluster([functools.partial(int, "0")] * 2)  # warm: a worker's cold start is not a stall
t0 = time.monotonic()
stalled = on_cluster([functools.partial(int, "7"), nap], stall=15)
stall_s = time.monotonic() - t0
signal.signal(signal.SIGTERM, _on_signal)
threading.Timer(3, os.kill, (os.getpid(), signal.SIGTERM)).start()
t0 = time.monotonic()
try:
    on_cluster([nap])
    stopped = None
except Stopped as exc:
    stopped = exc.code
print(json.dumps({"stalled": [type(r).__name__ if isinstance(r, Exception) else r for r in stalled],
                  "stall_s": stall_s, "stopped": stopped, "stop_s": time.monotonic() - t0}))
"""


def test_the_cluster_s_own_tasks_end_and_a_signal_stops_them(head, tmp_path, ray_env):
    """The end-of-run work the driver hands the cluster (`engines.ray.on_cluster`) always ends: a
    task that answers nothing while no other does for the stall time is given up (the others'
    answers kept), and SIGTERM during the wait reaches the CLI's handler at once (a blocking
    `ray.get` ran the handler inside Ray, which swallowed its exception: the run went on). The
    cluster is warmed first and the stall is 15 s: a worker's cold start on a loaded host took
    over 3 s in CI, which is a slow start, not a stalled task."""
    env = {**os.environ, **ray_env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", ON_CLUSTER, head.address], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    got = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert got["stalled"] == [7, "TimeoutError"] and got["stall_s"] < 100, got  # not the 120 s nap
    assert got["stopped"] == 143 and got["stop_s"] < 30, got
