"""Throughput and memory figures for matpac, measured in one run (not a test).

Generates its own audio (44.1 kHz stereo FLAC) and a full-size random ViT-B checkpoint in the
release layout, then prints:
  (a) encoder-only audio-seconds per second on ready log-mel chunks at the chosen batch size,
  (b) end-to-end `embed` audio-seconds per second on the FLAC folder (decode, resample, log-mel,
      batching across files, encoder, writers),
  (c) the same audio through a naive loop: one file at a time, whole-file decode and resample,
      one chunk per forward pass, nothing overlapped (how the reference inference code works),
  (d) peak RSS of `matpac embed` on a 1-minute and on a 30-minute file,
  (e) end to end and the decode-only ceiling for MP3 and 16 kHz WAV beside FLAC (`--formats`),
and the ratios b/a and b/c. The naive loop runs with torch's default threads.

    python benchmarks/throughput.py                 # CPU defaults
    python benchmarks/throughput.py --device cuda --batch-size 32 --precision bf16
    python benchmarks/throughput.py --skip-memory --files 4 --seconds 30
    python benchmarks/throughput.py --device cuda --sweep   # batch 8/32/128 x fp32/fp16/bf16 table

On CUDA two figures say how well the pipeline keeps the GPU fed: b/a, the share of the end-to-end
wall time the encoder alone would need for the same audio, and "GPU busy", the mean of NVML's
utilisation (share of time a kernel was running) sampled every 20 ms during (b).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from matpac_cli.config import Device, pick_precision
from matpac_cli.encoder.cpu import cpu_label


def make_checkpoint(path: Path, n_t: int = 608, seed: int = 0) -> None:
    """Full-size ViT-B weights in the release layout (random, but with realistic scales)."""
    from matpac_cli.config import EncoderDims
    from matpac_cli.encoder.vit import MatpacEncoder

    torch.manual_seed(seed)
    model = MatpacEncoder(EncoderDims(width=768, depth=12, heads=12, mlp_width=3072, n_t=n_t))
    sd = {
        k: (torch.randn_like(v) * 0.02 if v.ndim > 1 else v + 0.01 * torch.randn_like(v))
        for k, v in model.state_dict().items()
    }
    torch.save(sd, path)


FORMATS = {  # name: (suffix, rate, libsndfile format): what the end-to-end figures are given for
    "flac": (".flac", 44100, "FLAC"),  # 44.1 kHz stereo FLAC: resampled
    "mp3": (".mp3", 44100, "MP3"),  # what music libraries hold
    "wav16": (".wav", 16000, "WAV"),  # 16 kHz WAV: no resampling at all
}


def make_flac(path: Path, seconds: float, seed: int, sr: int = 44100, fmt: str = "FLAC") -> None:
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=sr, channels=2, format=fmt) as f:
        block = sr * 10
        for start in range(0, int(seconds * sr), block):
            n = min(block, int(seconds * sr) - start)
            t = (start + np.arange(n)) / sr
            tone = 0.2 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
            f.write((0.05 * rng.standard_normal((n, 2)) + tone[:, None]).astype(np.float32))


def encoder_only(ckpt: Path, device: str, precision: str, batch: int, min_seconds: float = 3.0) -> float:
    """Audio-seconds per second on ready log-mel chunks, timed for at least `min_seconds`."""
    from matpac_cli.inference.predictor import Predictor

    pred = Predictor.load(str(ckpt), device, precision)
    n_t = pred.dims.n_t
    mel = torch.randn(batch, 80, n_t, device=pred.device, dtype=pred.dtype)
    with torch.inference_mode():
        for _ in range(3 if Device.parse(device).is_cuda else 1):  # warm-up: kernel choice, caches
            pred.encoder(mel)
        _sync(pred.device)
        n, t0 = 0, time.perf_counter()
        while n < 2 * batch or time.perf_counter() - t0 < min_seconds:
            pred.encoder(mel)
            n += batch
            if Device.parse(device).is_cuda and n % (8 * batch) == 0:
                _sync(pred.device)  # keep the clock honest: launches run ahead of the GPU
        _sync(pred.device)
        dt = time.perf_counter() - t0
    return n * n_t * 0.01 / dt


class GpuBusy:
    """Mean NVML utilisation while the block runs (None off CUDA or without NVML)."""

    def __init__(self, device: str) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()

    def __enter__(self) -> GpuBusy:
        if Device.parse(self.device).is_cuda:
            try:
                torch.cuda.utilization(torch.device(self.device))
            except Exception:  # noqa: BLE001 - NVML missing: report no figure
                return self
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(torch.cuda.utilization(torch.device(self.device)))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def end_to_end(
    ckpt: Path, folder: Path, out: Path, device: str, precision: str, batch: int, workers: int | None
) -> tuple[float, float, np.ndarray, float | None]:
    """`embed` on the folder: rate, audio seconds, embeddings, and the GPU's busy share."""
    from matpac_cli.config import RunOptions
    from matpac_cli.inference.predictor import Predictor
    from matpac_cli.jobs.embed import EmbedConfig, embed
    from matpac_cli.pipeline.discovery import discover

    pred = Predictor.load(str(ckpt), device, precision)
    items = discover([str(folder)])
    options = RunOptions(device, precision, batch_size=batch, workers=workers)
    if Device.parse(device).is_cuda:  # warm-up on one file, so kernel selection is not timed
        embed(items[:1], pred, EmbedConfig(out=out.with_name("warmup.npy"), force=True, options=options))
    with GpuBusy(device) as busy:
        t0 = time.perf_counter()
        summary = embed(items, pred, EmbedConfig(out=out, force=True, options=options))
        _sync(pred.device)
        dt = time.perf_counter() - t0
    return summary.audio_s / dt, summary.audio_s, np.load(out), busy.mean


def decode_only(folder: Path, workers: int | None, device: str) -> float:
    """Audio-seconds per second of the decoding side alone, as the pipeline runs it for `device`:
    decode, downmix and cut in the worker threads, and on a CPU resample there too (on a GPU the
    batch resamples on the device): the ceiling for (b)."""
    from matpac_cli.pipeline.discovery import discover
    from matpac_cli.pipeline.feed import IDLE, decoded, default_workers

    items = discover([str(folder)])
    before = torch.get_num_threads()
    if device != "cpu":
        torch.set_num_threads(1)  # as pipeline.run does when the CPU only decodes
    try:
        t0, total = time.perf_counter(), 0.0
        for _, msg in decoded(items, workers or default_workers(device), (608,), lambda: True, device != "cpu"):
            if isinstance(msg, dict):
                total += sum(min(w.length, 97_280) for w, _ in msg[608]) / 16_000
            assert msg is not IDLE
        return total / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)  # the naive loop after this runs with torch's default


def naive(ckpt: Path, folder: Path, device: str, precision: str) -> tuple[float, np.ndarray]:
    """One file at a time, whole file in memory, one chunk per forward, nothing overlapped."""
    from matpac_cli.encoder.logmel import LogMel
    from matpac_cli.encoder.resample import resample
    from matpac_cli.inference.predictor import Predictor

    pred = Predictor.load(str(ckpt), device, precision)
    logmel = LogMel().to(pred.device)
    n_t = pred.dims.n_t
    rows, total = [], 0.0
    t0 = time.perf_counter()
    for path in sorted(folder.iterdir()):
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        total += len(data) / sr
        wave = resample(torch.from_numpy(data.mean(axis=1)), sr).to(pred.device)
        with torch.no_grad():
            mel = logmel(wave[None], torch.tensor([len(wave)], device=pred.device))[0]
            cols = []
            for start in range(0, mel.shape[-1], n_t):
                chunk = mel[None, :, start : start + n_t]
                cols.append(pred.encoder(chunk.to(pred.dtype))[-1][0].float())
            rows.append(torch.cat(cols).mean(0).cpu().numpy())
    _sync(pred.device)
    dt = time.perf_counter() - t0
    return total / dt, np.stack(rows)


def peak_rss_mb(ckpt: Path, audio: Path, out: Path, device: str) -> float:
    """Run `matpac embed` in a fresh process and report its peak resident memory."""
    code = (
        "import resource, sys\n"
        "from matpac_cli.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    args = ["embed", str(audio), "--out", str(out), "--model", str(ckpt), "--device", device, "--force", "--quiet"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"embed failed on {audio}: {proc.stderr}")
    return float(proc.stderr.strip().splitlines()[-1])


def prepare(tmp: Path, args: argparse.Namespace, fmt: str = "flac") -> tuple[Path, Path, float]:
    """A full-size checkpoint and a folder of `fmt` files; returns them and the seconds of audio.

    At most 8 distinct files are synthesised; the rest are copies under other names, which the
    pipeline decodes like any other file, so a GPU-sized corpus takes seconds to build.
    """
    ckpt = tmp / "vitb.pt"
    if not ckpt.exists():
        make_checkpoint(ckpt)
    return ckpt, make_folder(tmp, args, fmt), args.files * args.seconds


def make_folder(tmp: Path, args: argparse.Namespace, fmt: str) -> Path:
    suffix, rate, kind = FORMATS[fmt]
    folder = tmp / fmt
    folder.mkdir()
    distinct = min(args.files, 8)
    for i in range(distinct):
        make_flac(folder / f"track{i:03d}{suffix}", args.seconds, seed=i, sr=rate, fmt=kind)
    for i in range(distinct, args.files):
        shutil.copyfile(folder / f"track{i % distinct:03d}{suffix}", folder / f"track{i:03d}{suffix}")
    return folder


def formats_table(tmp: Path, ckpt: Path, args: argparse.Namespace, precision: str, batch: int) -> list[dict]:
    """End to end and the decode-only ceiling for MP3 and 16 kHz WAV beside FLAC (`--formats`)."""
    rows = []
    print(f"format  end-to-end  decode-only ceiling  GPU busy   (precision {precision}, batch {batch})")
    for fmt in args.formats.split(","):
        folder = tmp / fmt if (tmp / fmt).is_dir() else make_folder(tmp, args, fmt)
        b, _, _, busy = end_to_end(ckpt, folder, tmp / f"emb-{fmt}.npy", args.device, precision, batch, args.workers)
        dec = decode_only(folder, args.workers, args.device)
        shown = f"{busy:8.0%}" if busy is not None else "       -"
        print(f"{fmt:6s} {b:11.1f} {dec:20.1f}  {shown}", flush=True)
        rows.append({"format": fmt, "end_to_end": b, "decode_only": dec, "gpu_busy": busy})
    return rows


def _header(args: argparse.Namespace) -> str:
    from matpac_cli.pipeline.feed import default_workers

    where = torch.cuda.get_device_name(torch.device(args.device)) if Device.parse(args.device).is_cuda else cpu_label()
    workers = args.workers or default_workers(args.device)
    return (
        f"device {args.device} ({where}), {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"decode workers {workers}; precision {args.precision}, batch {args.batch_size}; "
        f"{args.files} x {args.seconds:.0f} s stereo files (FLAC and MP3 at 44.1 kHz, WAV at 16 kHz)"
    )


def _sync(device: str) -> None:
    if Device.parse(device).is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--files", type=int, default=6, help="FLAC files for (b) and (c)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each FLAC file")
    ap.add_argument("--skip-memory", action="store_true", help="skip (d)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--formats", default="flac,mp3,wav16", help="formats for the end-to-end / decode-only table (flac, mp3, wav16)"
    )
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="(a) and (b) for batch sizes 8/32/128 in fp32 and reduced precision, with max diff vs fp32",
    )
    args = ap.parse_args()
    from matpac_cli.encoder import cpu

    cpu.keep_freed_memory()  # the allocator setting the `matpac` program makes for itself
    if args.sweep:
        return sweep(args)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, folder, total = prepare(tmp, args)
        print(_header(args))
        a = encoder_only(ckpt, args.device, args.precision, args.batch_size)
        print(f"(a) encoder only      : {a:8.1f} audio-s/s")
        b, _, emb, busy = end_to_end(
            ckpt, folder, tmp / "emb.npy", args.device, args.precision, args.batch_size, args.workers
        )
        print(f"(b) end-to-end embed  : {b:8.1f} audio-s/s" + (f"   GPU busy {busy:.0%}" if busy is not None else ""))
        dec = decode_only(folder, args.workers, args.device)
        print(f"    decoding side only: {dec:8.1f} audio-s/s (decode, resample, cut; the ceiling for b)")
        c, ref = naive(ckpt, folder, args.device, args.precision)
        print(f"(c) naive loop        : {c:8.1f} audio-s/s")
        diff = float(np.abs(emb - ref).max())
        print(f"    b/a = {b / a:.2f}   b/c = {b / c:.2f}   max |embed - naive| = {diff:.2e}")
        figures = {
            "encoder_only": a,
            "end_to_end": b,
            "naive": c,
            "b_over_a": b / a,
            "b_over_c": b / c,
            "max_abs_diff": diff,
            "gpu_busy": busy,
            "decode_only": dec,
        }
        if args.formats:
            figures["formats"] = formats_table(tmp, ckpt, args, args.precision, args.batch_size)
        if not args.skip_memory:
            short, long = tmp / "one_min.flac", tmp / "thirty_min.flac"
            make_flac(short, 60, seed=1)
            make_flac(long, 1800, seed=2)
            m1 = peak_rss_mb(ckpt, short, tmp / "m1.npy", args.device)
            m30 = peak_rss_mb(ckpt, long, tmp / "m30.npy", args.device)
            print(
                f"(d) peak RSS          : 1-min file {m1:.0f} MB, 30-min file {m30:.0f} MB, difference {m30 - m1:.0f} MB"
            )
            figures.update(rss_1min_mb=m1, rss_30min_mb=m30)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))


def sweep(args: argparse.Namespace) -> None:
    """The GPU table of the throughput issue: rates per batch size and precision, and accuracy."""
    precisions = ["fp32", "fp16", "bf16"] if Device.parse(args.device).is_cuda else ["fp32", "bf16"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, folder, total = prepare(tmp, args)
        reference = {}
        print(_header(args))
        print(f"decoding side only: {decode_only(folder, args.workers, args.device):.1f} audio-s/s")
        print("batch precision  encoder-only  end-to-end   b/a  GPU busy  max|diff vs fp32|", flush=True)
        for batch in (8, 32, 128):
            for precision in precisions:
                a = encoder_only(ckpt, args.device, precision, batch)
                b, _, emb, busy = end_to_end(ckpt, folder, tmp / "emb.npy", args.device, precision, batch, args.workers)
                reference.setdefault(batch, emb if precision == "fp32" else None)
                diff = float(np.abs(emb - reference[batch]).max()) if reference[batch] is not None else float("nan")
                shown = f"{busy:8.0%}" if busy is not None else "       -"
                print(f"{batch:5d} {precision:9s} {a:12.1f} {b:11.1f} {b / a:5.0%}  {shown}  {diff:.2e}", flush=True)
                rows.append(
                    {
                        "batch": batch,
                        "precision": precision,
                        "encoder_only": a,
                        "end_to_end": b,
                        "b_over_a": b / a,
                        "gpu_busy": busy,
                        "max_abs_diff_vs_fp32": diff,
                    }
                )
        best = pick_precision("auto", args.device)  # what `--precision auto` computes at there
        if args.formats:
            rows.append(
                {"formats": formats_table(tmp, ckpt, args, best, 128 if Device.parse(args.device).is_cuda else 8)}
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
