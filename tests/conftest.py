"""The one home of the tests' shared fixtures and helpers: tiny checkpoints in the release layout,
generated audio (soundfile for PCM, PyAV for AAC and friends), a loopback server, the real command
in a subprocess or in-process, and the reference numbers of the two shared audio folders.

Test files import the plain helpers from here (`from conftest import write_audio`; tests/ is on
sys.path) and name the fixtures as parameters; none of them keeps a copy, so a change of the tiny
model or of how a run is captured happens once. The classifier-head helpers are in probes.py.

Nothing here reaches the network: weights come from `fakeserver.FakeServer` through the real
download code, audio is synthesised with numpy and written with soundfile or PyAV.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))

import reference as R  # noqa: E402
from fakeserver import FakeServer, patch_hub  # noqa: E402
from reference import make_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _session_library(tmp_path_factory):
    """A library for what runs outside any one test (module-scoped fixtures that embed): never
    the user's ~/.cache/matpac/library. Each test then gets its own (`_isolated_cache`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATPAC_LIBRARY", str(tmp_path_factory.mktemp("session-library") / "library"))
        yield


@pytest.fixture()
def no_library(monkeypatch):
    """For tests of a run without the library (MATPAC_LIBRARY=off, as `--no-library`): nothing
    reused, nothing kept between runs, pyarrow and Lance never imported."""
    monkeypatch.setenv("MATPAC_LIBRARY", "off")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, tmp_path_factory, monkeypatch):
    """Every test gets its own HF cache, its own empty matpac library and no real endpoint, so
    nothing leaks or downloads."""
    import huggingface_hub.constants as hf

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # closed port: any stray request fails fast
    monkeypatch.setenv("MATPAC_RELEASE_URL", "http://127.0.0.1:9/")
    # never the user's; empty at each test's start; outside tmp_path, which tests list as the run's outputs
    monkeypatch.setenv("MATPAC_LIBRARY", str(tmp_path_factory.mktemp("library") / "library"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))  # search indexes
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_DISABLE_TELEMETRY", True)
    yield


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints (width 128, depth 2) in the release layout: 608 frames, and 992 + AudioSet head."""
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    sd = make_checkpoint(width=128, depth=2, n_t=608, seed=1)
    out["tiny608"] = d / "tiny608.pt"
    torch.save(sd, out["tiny608"])
    sd_as = make_checkpoint(width=128, depth=2, n_t=992, seed=2, with_audioset_head=True, n_classes=527)
    out["tiny992_as"] = d / "tiny992_as.pt"
    torch.save(sd_as, out["tiny992_as"])
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A third tiny checkpoint (seed 3) for the end-to-end runs that only need some model."""
    path = tmp_path_factory.mktemp("m") / "tiny.pt"
    torch.save(make_checkpoint(width=128, depth=2, n_t=608, seed=3), path)
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A checkpoint as wide as the release's (3840 values a clip embedding), one layer deep,
    loaded for the CPU: what a run's memory per file is measured with."""
    from matpac_cli.inference.predictor import Predictor

    path = tmp_path_factory.mktemp("wide") / "wide.pt"
    torch.save(make_checkpoint(width=768, depth=1, n_t=608, seed=5), path)
    return Predictor.load(str(path), device="cpu", precision="fp32")


def held_per_file(folder: Path, out: Path, model, library, options=None, summaries: list | None = None) -> float:
    """`embed` of `folder` into `out` through the Python API, with the memory Python holds
    (traced) sampled as each file is done: the bytes more it holds for each file, fitted over
    the run's last three quarters (after the start's own allocations) through the least held
    in each of 6 stretches (what stays, not what waits for the next commit). The run's summary
    is added to `summaries`, where given."""
    import tracemalloc

    from matpac_cli import EmbedConfig, Listeners, RunOptions, discover, embed

    items = discover([str(folder)])
    held: list[int] = []
    tracemalloc.start()
    try:
        config = EmbedConfig(out=out, library=library, options=options or RunOptions(batch_size=8, workers=1))
        sample = Listeners(progress=lambda i, s: held.append(tracemalloc.get_traced_memory()[0]))
        summary = embed(items, model, config, sample)
    finally:
        tracemalloc.stop()
    assert summary.done == len(items) and not summary.failures, summary.failures
    if summaries is not None:
        summaries.append(summary)
    stretches = np.array_split(np.arange(len(held) // 4, len(held)), 6)
    lows = [min(stretch, key=lambda j: held[j]) for stretch in stretches]
    return float(np.polyfit(lows, [held[j] for j in lows], 1)[0])


@pytest.fixture(scope="module")
def predictor(ckpts):
    """tiny608 loaded for the CPU in fp32, once per test module."""
    from matpac_cli.inference.predictor import Predictor

    return Predictor.load(str(ckpts["tiny608"]), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def sd608(ckpts) -> dict:
    """The state dict of `ckpts["tiny608"]`, for the reference implementation."""
    return load_sd(ckpts["tiny608"])


@pytest.fixture()
def server():
    srv = FakeServer().start()
    yield srv
    srv.stop()


@pytest.fixture()
def hub(server, tmp_path, monkeypatch):
    """The loopback server wired in as both the Hub endpoint and the release base URL."""
    patch_hub(monkeypatch, server.url, tmp_path / "hf_home")
    monkeypatch.setenv("MATPAC_RELEASE_URL", server.url + "/")
    return server


def write_audio(
    path: Path, seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0, subtype: str | None = None
) -> Path:
    """Noise plus a tone, so every chunk has energy in many mel bands."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    base = 0.1 * rng.standard_normal((n, channels)) + 0.2 * np.sin(2 * np.pi * (220 + 110 * seed) * t)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, base.astype(np.float32) if channels > 1 else base[:, 0].astype(np.float32), sr, subtype=subtype)
    return path


def run_matpac(
    args: list[str], env: dict | None = None, input: bytes | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real command in a subprocess (stdout, stderr and exit status as a shell sees them)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "matpac_cli", *args],
        env=full_env,
        input=input,
        capture_output=True,
        cwd=cwd,
        timeout=timeout,
    )


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """The real command in-process: (exit status, stdout, stderr). torch is already imported, so a
    run costs a fraction of a subprocess; what the test printed before is not part of the answer."""
    from matpac_cli.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def read_wave(path: Path) -> tuple[np.ndarray, int]:
    wave, sr = sf.read(str(path), dtype="float32", always_2d=False)
    return wave, sr


def load_sd(path: Path) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------ encoded audio

LAYOUTS = {1: "mono", 2: "stereo"}


def signal(seconds: float, sr: int, channels: int, seed: int = 0) -> np.ndarray:
    """(channels, n) float32: noise plus a different tone per channel."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    tones = [0.3 * np.sin(2 * np.pi * (330 + 220 * c) * t) for c in range(channels)]
    return (0.05 * rng.standard_normal((channels, n)) + np.array(tones)).astype(np.float32)


def write_encoded(
    path: Path, seconds: float, sr: int, channels: int, seed: int = 0, codec: str = "aac", container: str = "ipod"
) -> Path:
    """Encode `signal` with PyAV (FFmpeg's encoders in the `av` wheel, no ffmpeg binary needed):
    AAC in an .m4a (ipod muxer) by default."""
    x = signal(seconds, sr, channels, seed)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=sr, layout=LAYOUTS[channels])
        stream.bit_rate = 128_000
        offered = [f.name for f in stream.codec_context.codec.audio_formats]
        fmt = next(f for f in ("fltp", "flt", "s16p", "s16") if f in offered)
        step = 1152 if codec in ("mp3", "libmp3lame", "mp2") else 1024
        for start in range(0, x.shape[1], step):
            block = x[:, start : start + step]
            if not fmt.endswith("p"):  # packed sample format: interleave
                block = block.T.reshape(1, -1)
            if fmt.startswith("s16"):
                block = (np.clip(block, -1, 1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=fmt, layout=LAYOUTS[channels])
            frame.sample_rate, frame.pts = sr, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_m4a(path: Path, seconds: float, sr: int = 44100, channels: int = 2, seed: int = 0) -> Path:
    return write_encoded(path, seconds, sr, channels, seed)


# ------------------------------------------------------------------------------------ music folder


def make_music_dir(root: Path) -> Path:
    """Two files: 3 s mono 16 kHz (1 chunk), 7 s stereo 22.05 kHz in a subfolder (2 chunks)."""
    write_audio(root / "a.wav", 3.0, seed=0)
    write_audio(root / "sub" / "b.flac", 7.0, sr=22050, channels=2, seed=1)
    return root


def ref_embeddings(sd: dict, folder: Path) -> dict[str, np.ndarray]:
    """Reference clip embedding of every audio file under `folder`, keyed by file name."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix in (".wav", ".flac"):
            out[p.name] = R.reference_embedding(sd, *read_wave(p))
    return out


@pytest.fixture(scope="module")
def music_dir(tmp_path_factory) -> Path:
    """The folder the tag tests run on (see `make_music_dir`)."""
    return make_music_dir(tmp_path_factory.mktemp("music"))


@pytest.fixture(scope="module")
def ref608(ckpts, music_dir) -> dict[str, np.ndarray]:
    """Reference clip embeddings of `music_dir` by tiny608 (test_numerics has its own `ref608` of
    its clips, per layer, which overrides this one there)."""
    return ref_embeddings(load_sd(ckpts["tiny608"]), music_dir)


# ------------------------------------------------------------------------------------ numerics clips

CLIP_ATOL = 1e-4  # clip embeddings against the reference

# name -> (seconds, sample rate, channels, columns of the 608-frame model, of the 992-frame model)
# columns = sum over chunks of ceil(chunk frames / 16), whole-file frames = 1 + (n16k - 400) // 160
CLIPS = {
    "a_tiny.wav": (0.05, 16000, 1, 1, 1),  # 800 samples: 3 frames, less than one patch column
    "b_exact608.wav": (97_520 / 16000, 16000, 1, 38, 38),  # exactly 608 frames: one full chunk
    "c_long14s.wav": (14.0, 16000, 1, 88, 88),  # 1398 frames: 608 + 608 + 182 (short last chunk)
    "d_stereo.wav": (2.5, 16000, 2, 16, 16),  # 248 frames
    "e_44k.wav": (2.0, 44100, 1, 13, 13),  # 32000 samples at 16 kHz: 198 frames
    "f_48k_stereo.wav": (7.0, 48000, 2, 44, 44),  # 698 frames: 608 + 90 (two chunks at 608)
    "g_22k.wav": (1.5, 22050, 1, 10, 10),  # 148 frames
    # longer than the decoder's blocks, so any streamed resampling meets block boundaries
    "h_44k_long.wav": (12.3, 44100, 1, 77, 77),  # 196,800 samples: 1228 frames = 608+608+12 | 992+236
    "i_22k_long.wav": (11.0, 22050, 2, 69, 69),  # 176,000 samples: 1098 frames = 608+490 | 992+106
    "j_8k_long.wav": (10.5, 8000, 1, 66, 66),  # upsampled, 168,000 samples: 1048 frames
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Every rate, channel count and chunk boundary of `CLIPS`, written as float WAV."""
    d = tmp_path_factory.mktemp("clips")
    for seed, (name, (seconds, sr, ch, _, _)) in enumerate(CLIPS.items()):
        write_audio(d / name, seconds, sr=sr, channels=ch, seed=seed, subtype="FLOAT")
    return d


def clip_frames(clips: Path, sd: dict, layers: tuple[int, ...]) -> dict[str, dict[int, np.ndarray]]:
    """name -> {layer: reference frames (columns, width * 5)} of every clip in `CLIPS`."""
    out = {}
    for name in CLIPS:
        wave, sr = read_wave(clips / name)
        out[name] = {layer: R.reference_frames(sd, wave, sr, layer=layer) for layer in layers}
    return out


def clip_items(clips: Path) -> list:
    from matpac_cli.pipeline.discovery import Item

    return [Item(str(clips / name), clips / name) for name in sorted(CLIPS)]


def run_pipeline(predictor, clips, layers, batch_size, frames=True) -> dict:
    """The local engine over every clip with one plan; {file name: result}, no failure allowed."""
    from matpac_cli.config import RunOptions
    from matpac_cli.engines.local import run
    from matpac_cli.events import Listeners
    from matpac_cli.pipeline.assemble import Plan

    results, failures = {}, []
    run(
        RunOptions(batch_size=batch_size, workers=2),
        clip_items(clips),
        [Plan(predictor, layers=layers, frames=frames)],
        Listeners(failure=failures.append),
        on_result=lambda r: results.__setitem__(Path(r.item.name).name, r),
    )
    assert failures == []
    return results


# ------------------------------------------------------------------------------------ the library's files


def ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    """`src` re-encoded by the ffmpeg program into `dst` (its extension picks the format; `args`
    go before the output: a filter, a codec), with no metadata carried over."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-map_metadata", "-1", *args, str(dst)]
    subprocess.run(cmd, check=True, capture_output=True)
    return dst


def retag(path: Path, title: str) -> None:
    """A tag editor's rewrite with mutagen: a title and a long comment, so the file's bytes and
    size change while its audio does not (ID3 in MP3 and WAV, Vorbis comments, MP4 atoms)."""
    import mutagen
    from mutagen.id3 import COMM, ID3, TIT2

    f = mutagen.File(str(path), easy=True)
    if f.tags is None:
        f.add_tags()
    if isinstance(f.tags, ID3):
        f.tags.add(TIT2(encoding=3, text=[title]))
        f.tags.add(COMM(encoding=3, lang="eng", desc="", text=[title * 50]))
    else:
        f["title"] = [title]
        f["artist"] = [title * 50]
    f.save()


def library_files(root: Path | None = None) -> int:
    """Files the library at `root` (default: this test's, $MATPAC_LIBRARY) has committed so far,
    by audio key: what a run killed now would find on its re-run."""
    import lance

    clips = Path(root or os.environ["MATPAC_LIBRARY"]) / "clips.lance"
    if not clips.exists():
        return 0
    try:
        return len(set(lance.dataset(str(clips)).to_table(columns=["key"]).column("key").to_pylist()))
    except (OSError, ValueError):  # a commit in progress: counted next time
        return 0


@pytest.fixture
def no_allocator_setting(monkeypatch):
    """The Ray actors' allocator setting is process-wide: not for the test process (tests that
    run an `engines.packs.Encoder` here)."""
    from matpac_cli.encoder import cpu

    monkeypatch.setattr(cpu, "keep_freed_memory", lambda: False)


def read_terminal(main: int) -> bytes:
    """Everything a command wrote to the pseudo-terminal whose main side is `main` (from
    `os.openpty`, the other side given to the command and closed here), until it closed it; then
    `main` is closed."""
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return out
