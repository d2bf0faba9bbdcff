"""The `matpac` program leaves without the interpreter's teardown (`os._exit` once main returned),
yet everything it printed arrives and the exit status is main's."""

from __future__ import annotations

import subprocess
import sys


def _run(tmp_path, args: list[str], stdout=subprocess.PIPE):
    flag = tmp_path / "teardown-ran"
    code = (
        "import atexit, sys; from matpac_cli.cli import entry; "
        f"atexit.register(lambda: open({str(flag)!r}, 'w').close()); "
        f"sys.argv = ['matpac', *{args!r}]; entry()"
    )
    proc = subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, timeout=120)
    return proc, flag.exists()


def test_exit_skips_teardown_and_flushes_output(tmp_path):
    proc, torn_down = _run(tmp_path, ["--version"])
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("matpac ")
    assert not torn_down  # atexit handlers (the interpreter's teardown) never ran


def test_exit_keeps_main_exit_status_and_stderr(tmp_path):
    proc, torn_down = _run(tmp_path, ["embed", "nothing-here.wav", "--out", str(tmp_path / "x.txt")])
    assert proc.returncode == 2
    assert proc.stderr.decode().count("\n") == 1 and "matpac: error:" in proc.stderr.decode()
    assert not torn_down


def test_exit_on_full_stdout_is_one_line_and_status_2(tmp_path):
    with open("/dev/full", "w") as full:
        proc, _ = _run(tmp_path, ["models", "list"], stdout=full)
    assert proc.returncode == 2, proc.stderr.decode()
    assert proc.stderr.decode().strip().startswith("matpac: error:")
    assert "Traceback" not in proc.stderr.decode()
