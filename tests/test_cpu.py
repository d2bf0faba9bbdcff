"""The CPU facts matpac acts on: which linear layers by vendor (the variable overriding), and the
allocator setting that spares each batch its page faults, applied by the processes matpac owns
(the `matpac` program, a Ray encoder actor) and by no library call."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from matpac_cli import cpu
from matpac_cli.errors import UsageError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# A 64 MB tensor freed and asked for again, three times: with glibc's defaults (mapped afresh,
# over its 32 MB ceiling) that is 16,384 first-touch faults each time; with the setting, none
# once the heap has grown to hold it (a few rounds in a fresh process).
FAULTS = textwrap.dedent("""
    import resource, torch
    def faults():
        n = 16 * 1024 * 1024  # float32: 64 MB
        for _ in range(6):
            torch.ones(n).sum()  # the heap grows (with the setting) to its size for this
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            torch.ones(n).sum()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
""")


@pytest.mark.parametrize("env, vendor, want", [
    ("", "GenuineIntel", "plain"),  # MKL's AVX-512 path: as fast in the encoder, no packing at load
    ("auto", "GenuineIntel", "plain"),
    ("", "AuthenticAMD", "onednn"),  # MKL takes AVX2 on AMD; oneDNN its AVX-512 kernels
    ("", "", "onednn"),  # no vendor line (ARM, macOS): oneDNN where its self-check passes
    ("onednn", "GenuineIntel", "onednn"),
    (" Plain ", "AuthenticAMD", "plain"),
])
def test_choice_by_vendor_with_the_variable_overriding(env, vendor, want):
    assert cpu.choose(env, vendor) == want


def test_choice_reads_the_variable_and_refuses_a_typo(monkeypatch):
    monkeypatch.setenv("MATPAC_CPU_LINEAR", "onednn")
    assert cpu.choose(vendor="GenuineIntel") == "onednn"
    monkeypatch.setenv("MATPAC_CPU_LINEAR", "mkl")
    with pytest.raises(UsageError, match="MATPAC_CPU_LINEAR=mkl: expected plain, onednn or auto"):
        cpu.choose(vendor="GenuineIntel")


def test_vendor_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert cpu.cpu_vendor(str(info)) == "AuthenticAMD"
    info.write_text("processor\t: 0\nCPU implementer\t: 0x41\n")  # an ARM CPU names no vendor_id
    assert cpu.cpu_vendor(str(info)) == ""
    assert cpu.cpu_vendor(str(tmp_path / "missing")) == ""


def _faults(body: str) -> int:
    proc = subprocess.run([sys.executable, "-c", FAULTS + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@linux_only
def test_freed_memory_is_reused_without_page_faults():
    assert _faults("print(faults())") > 3 * 10_000  # glibc's defaults: the case the setting is for
    assert _faults("from matpac_cli import cpu; assert cpu.keep_freed_memory(); print(faults())") < 1000


@linux_only
def test_the_matpac_program_sets_it_and_a_library_load_does_not(tmp_path):
    import torch

    from reference import make_checkpoint

    ckpt = tmp_path / "m.pt"
    torch.save(make_checkpoint(), ckpt)
    loaded = _faults(f"from matpac_cli.predictor import Predictor; Predictor.load({str(ckpt)!r}, 'cpu'); print(faults())")
    assert loaded > 3 * 10_000  # the process-wide setting is not a library's to make
    program = _faults("""
        import sys
        import matpac_cli.cli as cli
        cli.main = lambda: print(faults()) or 0  # what runs inside `matpac`, after its start-up
        sys.argv = ["matpac", "--version"]
        cli.entry()
    """)
    assert program < 1000


def test_a_ray_encoder_actor_sets_it(monkeypatch):
    from matpac_cli.engines.work import Encoder

    calls = []
    monkeypatch.setattr(cpu, "keep_freed_memory", lambda: calls.append(1) or True)
    actor = type("Job", (Encoder,), {"recipes": []})()
    assert calls == [1] and actor.error is None
