"""The CPU facts matpac acts on: which linear layers by vendor (the variable overriding), and the
allocator setting that spares each batch its page faults, applied by the processes matpac owns
(the `matpac` program, a Ray encoder actor) and by no library call."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from matpac_cli.encoder import cpu
from matpac_cli.errors import UsageError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# Where glibc put a live 64 MB tensor (mallinfo2: bytes in mapped blocks, and in the heap), and
# whether freeing it gave the heap back; with its defaults, over its 32 MB ceiling, it is mapped
# afresh (and page-faulted, zeroed) every time; with the setting it is served from a heap that
# is kept.
MALLINFO = textwrap.dedent("""
    import ctypes, torch
    class Info(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    def placed():
        before = libc.mallinfo2()
        t = torch.ones(16 * 1024 * 1024)  # float32: 64 MB
        live = libc.mallinfo2()
        del t
        after = libc.mallinfo2()
        return {"mapped": live.hblkhd - before.hblkhd, "trimmed": live.arena - after.arena}
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
""")


def _placed(body: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", MALLINFO + textwrap.dedent(body)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _on(got: dict) -> bool:  # served from the heap, which kept it once freed
    return got["mapped"] == 0 and got["trimmed"] == 0


def _off(got: dict) -> bool:  # mapped afresh
    return got["mapped"] >= 64 << 20


@pytest.mark.parametrize(
    "env, vendor, want",
    [
        ("", "GenuineIntel", "plain"),  # MKL's AVX-512 path: as fast in the encoder, no packing at load
        ("auto", "GenuineIntel", "plain"),
        ("", "AuthenticAMD", "onednn"),  # MKL takes AVX2 on AMD; oneDNN its AVX-512 kernels
        ("", "", "onednn"),  # no vendor line (ARM, macOS): oneDNN where its self-check passes
        ("onednn", "GenuineIntel", "onednn"),
        (" Plain ", "AuthenticAMD", "plain"),
    ],
)
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


@linux_only
def test_freed_memory_is_kept_in_the_heap():
    assert _off(_placed("import json; print(json.dumps(placed()))"))  # glibc's defaults
    got = _placed(
        "import json; from matpac_cli.encoder import cpu; assert cpu.keep_freed_memory(); print(json.dumps(placed()))"
    )
    assert _on(got), got


@linux_only
def test_what_loading_freed_is_handed_back_first():
    """300 MB freed into the heap before the call (as packing frees the plain weights): the
    setting must not keep it resident."""
    got = _placed("""
        import json
        from matpac_cli.encoder import cpu
        libc.mallopt(-1, 1 << 30); libc.mallopt(-3, 32 << 20)  # a heap that keeps what is freed
        junk = [torch.ones(7 * 1024 * 1024) for _ in range(10)]  # 10 x 28 MB from the heap
        del junk
        high = rss()
        cpu.keep_freed_memory()
        print(json.dumps({"dropped": high - rss()}))
    """)
    assert got["dropped"] > 200 << 20, got


@linux_only
def test_the_matpac_program_sets_it_after_loading_and_a_library_load_does_not(tmp_path):
    import torch
    from reference import make_checkpoint

    ckpt = tmp_path / "m.pt"
    torch.save(make_checkpoint(), ckpt)
    library = _placed(f"""
        import json
        from matpac_cli.inference.predictor import Predictor
        Predictor.load({str(ckpt)!r}, "cpu")
        print(json.dumps(placed()))
    """)
    assert _off(library), library  # the process-wide setting is not a library's to make
    program = _placed(f"""
        import json
        from matpac_cli.cli import _preflight
        from matpac_cli.config import RunOptions
        _preflight.load_predictor({str(ckpt)!r}, RunOptions("cpu"), quiet=True)  # the commands' way
        print(json.dumps(placed()))
    """)
    assert _on(program), program


def test_a_ray_encoder_actor_sets_it_once_its_models_have_loaded(monkeypatch):
    from matpac_cli.engines.packs import Encoder

    calls = []

    class Recipe:
        def load(self):
            calls.append("load")

    monkeypatch.setattr(cpu, "keep_freed_memory", lambda: calls.append("set") or True)
    actor = type("Job", (Encoder,), {"recipes": [Recipe()]})()
    assert calls == ["load", "set"] and actor.error is None


def test_the_misspelt_value_is_quoted_as_given():
    with pytest.raises(UsageError, match="MATPAC_CPU_LINEAR=MKL: expected"):
        cpu.choose("MKL")


def test_one_torch_thread_has_one_home_and_restores_the_count():
    """The local engine's decoding runs and the probe's training both take torch down to one thread
    through `cpu.one_torch_thread`; no second copy of the set-and-restore."""
    import torch

    before = torch.get_num_threads()
    with cpu.one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    homes = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "matpac_cli").rglob("*.py")
        if "set_num_threads(1)" in p.read_text(encoding="utf-8")
    ]
    assert homes == ["matpac_cli/encoder/cpu.py"]


ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
stepping\t: 1
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512_bf16 avx512vl

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: a second CPU is not read
"""


def test_the_cpu_is_named_by_family_model_and_the_flags_that_decide_its_kernels(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN4)
    got = cpu.cpu_info(str(info))
    assert got == {
        "vendor": "AuthenticAMD",
        "family": 25,
        "model": 17,
        "name": "AMD EPYC 9R14 96-Core Processor",
        "stepping": 1,
        "flags": ["avx2", "fma", "avx512f", "avx512_bf16"],
    }
    assert cpu.cpu_label(got) == "AMD EPYC 9R14 96-Core Processor (family 25, model 17; avx2 fma avx512f avx512_bf16)"
    assert cpu.bf16_hardware(got)
    info.write_text(ZEN4.replace(" avx512_bf16", ""))  # Zen 3 and older: AVX2 only, no bf16 hardware
    assert not cpu.bf16_hardware(cpu.cpu_info(str(info)))
    info.write_text("processor\t: 0\nCPU implementer\t: 0x41\nFeatures\t: fp asimd\n")  # ARM
    assert cpu.cpu_info(str(info)) == {"flags": []} and cpu.cpu_label({"flags": []}) == "unknown CPU (no AVX2)"
    assert cpu.cpu_info(str(tmp_path / "missing")) == {} and cpu.cpu_label({}) == "unknown CPU"
