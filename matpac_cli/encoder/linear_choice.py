"""Which linear layers an fp32 CPU encoder runs: measured once on this CPU, where the vendor rule
is not enough.

`cpu.choose()`'s rule (plain `nn.Linear` on Intel, oneDNN's packed layers elsewhere) was right on
the hosts it was measured on and wrong on others: on a Zen 4 EPYC oneDNN gained 15% where another
AMD host gained 1.7x, and on a 2-core AMX Xeon (family 6, model 167), where the rule says plain,
one block's layers ran 1.15-1.7x as fast through oneDNN. So, unless `MATPAC_CPU_LINEAR` names a
kind, the first fp32 CPU load on a machine times one encoder block's four layers both ways (at
the model's width and the CPU batch: 1.5 s for ViT-B on 2 cores) and keeps the answer in
$XDG_CACHE_HOME/matpac/cpu-linear.json, by CPU (name, family, model, flags), torch version,
threads and width; later loads read it. Where neither kind is `MARGIN` faster, the rule stands.
A cache that cannot be read or trusted is measured again; one that cannot be written is not
kept (the choice holds for this run): `sidefiles.read_cache`, as the checkpoints' hashes. Both kinds give the same numbers within float32 rounding
(tests/encoder/test_onednn.py).
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from matpac_cli.config import cache_home
from matpac_cli.encoder.cpu import choose, cpu_label
from matpac_cli.sidefiles import read_cache, save_cache

MARGIN = 0.05  # a kind must be this much faster than the other to overrule the vendor rule
REPS = 3  # timings of each kind, interleaved; the fastest of each counts
KINDS = ("plain", "onednn")


def cache_file():
    return cache_home() / "cpu-linear.json"


def key(width: int, mlp_width: int) -> str:
    """What a measurement holds for: this CPU, torch, its threads, the layers' sizes."""
    return f"{cpu_label()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {width}x{mlp_width}"


def decide(timings: dict[str, float], rule: str) -> str:
    """The kind that ran faster by more than `MARGIN`, else `rule`'s."""
    plain, fast = timings["plain"], timings["onednn"]
    if fast < plain * (1 - MARGIN):
        return "onednn"
    if plain < fast * (1 - MARGIN):
        return "plain"
    return rule


def measure(width: int, mlp_width: int, rows: int) -> dict[str, float]:
    """Seconds for one encoder block's linear layers (qkv, proj, fc1 with GELU, fc2) on `rows`
    token rows, plain and through oneDNN's packed layers: the fastest of `REPS` each."""
    from matpac_cli.encoder.onednn import OneDnnLinear

    gen = torch.Generator().manual_seed(0)
    layers = [
        nn.Linear(width, 3 * width),
        nn.Linear(width, width),
        nn.Linear(width, mlp_width),
        nn.Linear(mlp_width, width),
    ]
    x = torch.randn(rows, width, generator=gen)
    h = torch.randn(rows, mlp_width, generator=gen)
    qkv, proj, fc1, fc2 = layers
    packed = [
        OneDnnLinear(qkv, rows),
        OneDnnLinear(proj, rows),
        OneDnnLinear(fc1, rows, gelu=True),
        OneDnnLinear(fc2, rows),
    ]
    runs = {
        "plain": lambda: (qkv(x), proj(x), F.gelu(fc1(x)), fc2(h)),
        "onednn": lambda: (packed[0](x), packed[1](x), packed[2](x), packed[3](h)),
    }
    best = dict.fromkeys(KINDS, float("inf"))
    with torch.inference_mode():
        for run in runs.values():
            run()  # warm: first-call allocations and kernel selection
        for _ in range(REPS):
            for kind, run in runs.items():
                t0 = time.perf_counter()
                run()
                best[kind] = min(best[kind], time.perf_counter() - t0)
    return best


def chosen(width: int, mlp_width: int, rows: int, measured: list | None = None) -> str:
    """`MATPAC_CPU_LINEAR`'s kind where it names one; else this CPU's measured choice (timed now
    and kept where none is kept yet; `measured` receives the timings taken), else the rule."""
    rule = choose()
    if os.environ.get("MATPAC_CPU_LINEAR", "").strip().lower() in KINDS:
        return rule
    name = key(width, mlp_width)
    known = read_cache(cache_file())
    if name in known and known[name].get("choice") in KINDS:
        return known[name]["choice"]
    timings = measure(width, mlp_width, rows)
    if measured is not None:
        measured.append(timings)
    choice = decide(timings, rule)
    known[name] = {"choice": choice, **{f"{k}_ms": round(v * 1e3, 3) for k, v in timings.items()}}
    save_cache(cache_file(), known)
    return choice
