"""What the CPU path is told about the machine it runs on, without importing torch: which linear
layers the fp32 encoder uses here (`choose`), and the C library's allocator setting a program
that owns its process applies once its model has loaded (`keep_freed_memory`: the `matpac`
command and Ray's encoder actors do; a program that embeds matpac may call it too).

Why by vendor (benchmarks/RESULTS.md, 2-vCPU machines, fp32, 3 min of 44.1 kHz FLAC against the
authors' code, medians of interleaved rounds):
- AMD EPYC with AVX-512 (2026-12-03): MKL takes its AVX2 code path there, oneDNN its AVX-512
  kernels; `matpac embed` with oneDNN layers 2.48-2.68x the authors' code, with plain `nn.Linear`
  1.59-1.78x (two runs of 6 rounds).
- Intel Xeon with AVX-512 (2026-12-02): MKL takes its AVX-512 path and runs level with oneDNN in
  the encoder, while packing the weights for oneDNN costs about 0.9 s at load: plain layers 1.87x,
  oneDNN 1.71x.
- AVX2-only EPYC: both take AVX2; oneDNN gained 0-25% in the encoder, nothing end to end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

from matpac_cli.errors import UsageError

HEAP_BYTES = 1 << 30  # glibc serves allocations up to this from its heap, and keeps as much freed
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


# The instruction sets that decide which fp32 and bf16 kernels run (the rest of the flags say nothing
# about matpac's speed): recorded with the CPU's name, family and model in every manifest and
# benchmark, so a figure always says which CPU it was measured on.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_bf16", "amx_tile")
_FIELDS = {
    "vendor_id": "vendor",
    "model name": "name",
    "cpu family": "family",
    "model": "model",
    "stepping": "stepping",
}


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The first CPU of `cpuinfo`, as matpac records it: vendor, name, family, model and stepping
    (numbers where the kernel gives them), and which of `SPEED_FLAGS` it has. Fields that cannot
    be read are left out (another OS, an ARM machine: its "CPU implementer" is not parsed)."""
    found: dict = {}
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if not key and found:
                    break  # the end of the first CPU's block
                if key in _FIELDS and _FIELDS[key] not in found:
                    found[_FIELDS[key]] = int(value) if value.isdigit() else value
                elif key in ("flags", "Features") and "flags" not in found:
                    have = set(value.split())
                    found["flags"] = [flag for flag in SPEED_FLAGS if flag in have]
    except OSError:
        pass
    return found


def cpu_label(info: dict | None = None) -> str:
    """One line naming the CPU for figures: "Intel(R) Xeon(R) Processor (family 6, model 167;
    avx512f avx512_bf16 amx_bf16)"; "unknown CPU" where nothing could be read."""
    info = cpu_info() if info is None else info
    ids = ", ".join(f"{k} {info[k]}" for k in ("family", "model") if k in info)
    flags = " ".join(info.get("flags", [])) or "no AVX2"
    name = info.get("name") or info.get("vendor") or "unknown CPU"
    return f"{name} ({ids}; {flags})" if ids else f"{name} ({flags})" if "flags" in info else name


def bf16_hardware(info: dict | None = None) -> bool:
    """Whether the CPU computes bf16 in hardware (AMX or AVX-512 BF16): there `--precision bf16`
    is much faster than fp32 (oneDNN's bf16 kernels), at about 1e-2 from fp32's numbers."""
    flags = set((cpu_info() if info is None else info).get("flags", []))
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...); "" where it cannot be read."""
    return str(cpu_info(cpuinfo).get("vendor", ""))


def choose(env: str | None = None, vendor: str | None = None) -> str:
    """ "onednn" or "plain": `MATPAC_CPU_LINEAR` when set (plain, onednn; auto or empty: the
    rule), else by vendor: plain `nn.Linear` on Intel CPUs, where MKL takes its AVX-512 code
    path; oneDNN's kernels on every other CPU (AMD; ARM and others where its self-check passes)."""
    given = os.environ.get("MATPAC_CPU_LINEAR", "") if env is None else env
    env = given.strip().lower()
    if env in ("plain", "onednn"):
        return env
    if env not in ("", "auto"):
        raise UsageError(f"MATPAC_CPU_LINEAR={given}: expected plain, onednn or auto")
    return "plain" if (cpu_vendor() if vendor is None else vendor) == "GenuineIntel" else "onednn"


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the encoder's large temporaries for the next batch (Linux only).
    Call it once the model has loaded: what loading freed is handed back first (`malloc_trim`),
    so only what the batches use stays with the process.

    By default glibc maps every allocation over 32 MB (less, until it has adapted) freshly and
    hands freed heap tops back, so each batch's outputs (fc1's alone: 19 MB at batch 8, 38 MB at
    16) are page-faulted and zeroed again: 13,000-16,000 faults and 40 ms of system time per chunk
    with plain `nn.Linear`. Served from a heap that is kept, they cost none; results are
    unchanged. Measured (benchmarks/RESULTS.md): `matpac embed` 7-10% faster on a 2-vCPU AMD EPYC,
    14% on a 2-vCPU Xeon. The cost is process-wide: freed memory up to 1 GiB stays with the
    process (what the largest batch needed), which is why a library call never sets it. A thread
    other than the main one allocates from its own 64 MB arenas, where larger temporaries are
    mapped afresh whatever this says. Returns whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    malloc_trim(0)
    done = [mallopt(option, HEAP_BYTES) for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)]
    return all(done)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block, restored afterwards: for work whose own threads (the
    decoding workers) or small matrices (a probe's steps) lose more to torch's fan-out than they gain;
    one thread also keeps a probe's sums in one order whatever the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
