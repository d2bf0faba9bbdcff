"""`matpac report` reads in bounded memory (issue 20): a crafted tag file whose every segment row
has its own label and start time once asked for a (labels x segments) matrix (1.4 MB of CSV:
6.7 GiB); past the bounds on heads and labels the report says what it left out, on stderr
and in the page. Through the real command, its peak memory measured alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_matpac

HEADER = "path,head,label,score,rank,tag_id,start_s,end_s\n"


def _peak_rss_mib(args: list[str], cwd: Path) -> tuple[int, float, str]:
    """(exit status, peak resident MiB, stderr) of `matpac ARGS`, alone in a fresh parent so no
    other child of this test session counts in RUSAGE_CHILDREN."""
    code = (
        "import resource, subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-m', 'matpac_cli', *{args!r}], stderr=subprocess.PIPE)\n"
        "sys.stderr.buffer.write(r.stderr)\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, check=True, text=True)
    rc, kib = out.stdout.split()
    return int(rc), int(kib) / 1024, out.stderr


def test_a_segment_per_label_file_is_reported_in_bounded_memory(tmp_path):
    """8,000 segment rows, each its own label and start (380 KB): the dense matrix of every
    label by every segment was 8,000 x 8,000 float64 (a 1,090 MiB peak with its temporaries);
    now only the 8 labels a timeline shows become a matrix (53 MiB)."""
    n = 8000
    rows = [f"a.wav,genre,x{i},0.5,1,x{i},,\n" for i in range(3)]
    rows += [f"a.wav,genre,l{i},{(i % 100) / 100},1,l{i},{6.08 * i:.2f},{6.08 * i + 6.095:.3f}\n" for i in range(n)]
    (tmp_path / "t.csv").write_text(HEADER + "".join(rows))
    rc, peak, err = _peak_rss_mib(["report", "t.csv", "--out", "r.html"], tmp_path)
    print(f"report of {n} one-label segments: peak RSS {peak:.0f} MiB")
    assert rc == 0 and "Traceback" not in err, err
    assert peak < 400, f"peak RSS {peak:.0f} MiB"
    page = (tmp_path / "r.html").read_text()
    assert "l99" in page and "a.wav" in page  # the best-scoring labels are in its timeline


def test_heads_and_labels_past_the_bounds_are_left_out_and_said(tmp_path):
    from matpac_cli.jobs.report.data import MAX_HEADS, MAX_LABELS

    rows = [f"a.wav,genre,l{i},0.5,{i + 1},l{i},,\n" for i in range(MAX_LABELS + 5)]
    rows += [f"b.wav,h{i},l,0.5,1,l,,\n" for i in range(MAX_HEADS + 1)]  # with genre: 2 too many
    (tmp_path / "t.csv").write_text(HEADER + "".join(rows))
    proc = run_matpac(["report", "t.csv", "--out", "r.html"], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("matpac: warning:")]
    assert len(warnings) == 2, err
    assert f"more than {MAX_HEADS} heads; the report leaves out 2 of them" in warnings[0] + warnings[1]
    assert f"more than {MAX_LABELS:,} labels; the report leaves out 5 row(s)" in warnings[0] + warnings[1]
    page = (tmp_path / "r.html").read_text()
    assert "leaves out 2 of them" in page and "report of 2 file(s)" in err


def test_files_past_the_bound_are_counted_as_files(tmp_path):
    """The files past MAX_FILES (lowered to 2 here, in the real command) are said as files, not
    as their rows: 4 files of 3 rows leave out 2 file(s) (6 rows)."""
    rows = [f"{name}.wav,genre,l{i},0.5,{i + 1},l{i},,\n" for name in "abcd" for i in range(3)]
    (tmp_path / "t.csv").write_text(HEADER + "".join(rows))
    script = (
        "import sys\nfrom matpac_cli.jobs.report import data\nfrom matpac_cli.cli import main\n"
        "data.MAX_FILES = 2\nsys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "report", "t.csv", "--out", "r.html"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "t.csv: more than 2 files; the report leaves out the last 2 file(s)" in proc.stderr, proc.stderr
