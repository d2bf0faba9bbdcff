"""One resampler and one window grid (matpac_cli/encoder/resample.py, encoder/signal.py).

The whole-signal, streaming and batch resamplers read their geometry (o, n and the kernel's
width) from one function, and the 16 kHz and input-rate chunks come from one cutter. These tests
fail if a second width formula, a second kernel or a second cutter creeps back, or if the shared
ones stop agreeing with the spec's torchaudio call.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import reference as R
import torch
import torchaudio
from conftest import REPO

from matpac_cli.encoder import resample as S
from matpac_cli.encoder.signal import windows
from matpac_cli.pipeline.chunking import WindowStream

PACKAGE = REPO / "matpac_cli"
RATES = [8000, 11025, 22050, 44100, 48000, 96000, 37800, 44056, 12345]


SPEC = {  # the spec's resampler settings, written out independently of the code under test
    "lowpass_filter_width": R.RESAMPLE_LOWPASS_FILTER_WIDTH,
    "rolloff": R.RESAMPLE_ROLLOFF,
    "resampling_method": "sinc_interp_kaiser",
    "beta": R.RESAMPLE_BETA,
}


def _streamed(sr: int, x: np.ndarray, cuts: list[int]) -> torch.Tensor:
    rs = S.StreamResampler(sr)
    parts = [rs.push(torch.from_numpy(x[a:b])) for a, b in zip(cuts[:-1], cuts[1:])]
    parts.append(rs.push(torch.zeros(0), final=True))
    return torch.cat([p.reshape(-1) for p in parts])


@pytest.mark.parametrize("sr", RATES)
def test_whole_stream_and_batch_resamplers_share_one_geometry(sr):
    """All three report the one geometry, whose width is torchaudio's kernel's: the whole-signal
    path gives the spec's samples, the batch path exactly those (where the rate allows it), the
    stream path those to float32 rounding."""
    g = S.geometry(sr)
    spec = torchaudio.transforms.Resample(sr, 16000, **SPEC)
    assert g.width == spec.width and spec.kernel.shape == (g.n, 1, 2 * g.width + g.o)
    stream = S.StreamResampler(sr)
    assert stream.geometry == g and stream.ctx >= 2 * g.width + g.o and stream.ctx % g.o == 0

    rng = np.random.default_rng(sr)
    x = np.clip(0.3 * rng.standard_normal(int(6.5 * sr) + 11), -1, 1).astype(np.float32)  # audio range
    want = torchaudio.functional.resample(torch.from_numpy(x), sr, 16000, **SPEC)
    whole = S.resample(torch.from_numpy(x), sr)
    assert whole.shape == want.shape == (g.out_length(len(x)),)
    assert float((whole - want).abs().max()) <= 1e-6
    cuts = [0, 1, 1, *sorted(rng.choice(np.arange(2, len(x)), 7, replace=False).tolist()), len(x)]
    # blocks convolve in other shapes, so float32 rounding differs: ~1e-6 on full-scale white noise
    assert float((_streamed(sr, x, cuts) - whole).abs().max()) <= 2e-6
    if not S.eligible(sr, (608,)):
        return
    cutter = WindowStream(608, rate=sr)
    assert cutter.geometry == g
    got = [pair for a, b in zip(cuts[:-1], cuts[1:]) for pair in cutter.push(x[a:b])] + cutter.finish()
    assert [w for w, _ in got] == windows(len(whole), 608)
    for (w, _), wave in zip(got, S.resample_batch([chunk for _, chunk in got])):
        assert torch.equal(wave, whole[w.start : w.start + w.length]), w


@pytest.mark.parametrize("sr", [22050, 48000])
def test_one_cutter_gives_the_same_windows_at_16k_and_at_the_input_rate(sr):
    """The cutter fed the input rate (then resampled per batch) and the cutter fed the same
    signal already at 16 kHz give the same windows and the same samples."""
    x = (0.3 * np.random.default_rng(1).standard_normal(int(14.2 * sr))).astype(np.float32)
    w16 = S.resample(torch.from_numpy(x), sr).numpy()
    at16, at_rate = WindowStream(608), WindowStream(608, rate=sr)
    plain = [p for a in range(0, len(w16), 50_000) for p in at16.push(w16[a : a + 50_000])] + at16.finish()
    rated = [p for a in range(0, len(x), 70_001) for p in at_rate.push(x[a : a + 70_001])] + at_rate.finish()
    assert [w for w, _ in plain] == [w for w, _ in rated] == windows(len(w16), 608)
    for (_, samples), wave in zip(plain, S.resample_batch([chunk for _, chunk in rated])):
        np.testing.assert_array_equal(samples, wave.numpy())


def _sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_resampling_and_window_cutting_each_have_one_home():
    """The spec's resampler settings, torchaudio's resampler and a Window's construction each
    appear in one module only; input-rate chunks are not called segments (tag rows are)."""
    sources = _sources()
    kernel = re.compile(
        r"resample_lowpass_filter_width|resample_rolloff|\.Resample\(|functional\.resample|AF\.resample"
    )
    assert {name for name, text in sources.items() if kernel.search(text) and name != "config.py"} == {
        "encoder/resample.py"
    }
    assert sources["encoder/resample.py"].count("resample_lowpass_filter_width") == 1
    assert sources["encoder/resample.py"].count("conv1d(") == 1
    made = {name: len(re.findall(r"\bWindow\(", text)) for name, text in sources.items()}
    assert {name: n for name, n in made.items() if n} == {"encoder/signal.py": 1}
    assert not [name for name, text in sources.items() if re.search(r"SegmentStream|RateSegment", text)]
    for name in (
        "encoder/resample.py",
        "encoder/logmel.py",
        "encoder/signal.py",
    ):  # the dependency runs pipeline -> encoder
        assert set(re.findall(r"from matpac_cli\.(\w+)", sources[name])) <= {"config", "errors", "encoder"}, name
