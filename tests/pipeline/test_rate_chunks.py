"""Chunks cut at the input rate and resampled per batch (matpac_cli/encoder/resample.py).

On a CPU these run the very functions a GPU batch runs: cutting input-rate chunks in the
decoding workers and resampling them per batch. The resampled samples must be exactly the
whole-file resampler's (torchaudio.functional.resample with the spec's settings), and the
pipeline's results the same whichever side resamples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import reference as R
import torch
import torchaudio.functional as AF
from conftest import CLIP_ATOL, CLIPS, clip_frames, run_pipeline

from matpac_cli.encoder import resample as S
from matpac_cli.encoder.signal import windows
from matpac_cli.pipeline.chunking import WindowStream

RATES = [8000, 11025, 22050, 24000, 32000, 44100, 48000, 88200, 96000]


def _whole(x: np.ndarray, sr: int) -> torch.Tensor:
    """The spec's resampler on the whole file (float32, as the decoder hands it over)."""
    return AF.resample(
        torch.from_numpy(x),
        sr,
        16000,
        lowpass_filter_width=R.RESAMPLE_LOWPASS_FILTER_WIDTH,
        rolloff=R.RESAMPLE_ROLLOFF,
        resampling_method="sinc_interp_kaiser",
        beta=R.RESAMPLE_BETA,
    )


def _cut(x: np.ndarray, sr: int, n_t: int, seed: int) -> list:
    """Stream `x` in irregular blocks (one empty, one of one sample) through an input-rate WindowStream."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(2, len(x)), size=min(12, len(x) - 3), replace=False))
    cuts = np.concatenate([[0, 1, 1], cuts, [len(x)]])
    stream = WindowStream(n_t, rate=sr)
    got = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        got += stream.push(x[a:b])
    return got + stream.finish()


def _lengths(sr: int, n_t: int) -> list[int]:
    """Input lengths around the chunk grid: a long file, 16 kHz lengths landing exactly on a
    full chunk, one sample either side of it, and a tail just long enough for one frame."""
    size, hop = 160 * (n_t - 1) + 400, 160 * n_t
    out = [int(7.3 * sr) + 3]
    for n16 in (size, size + 1, size - 1, hop + size, hop + 400, 2 * hop + 399):
        out.append(max(3, n16 * sr // 16000))
    return out


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("n_t", [608, 992])
def test_segments_resample_to_the_whole_file_samples_exactly(sr, n_t):
    assert S.eligible(sr, (n_t,))
    rng = np.random.default_rng(sr + n_t)
    for i, n in enumerate(_lengths(sr, n_t)):
        x = (0.3 * rng.standard_normal(n)).astype(np.float32)
        whole = _whole(x, sr)
        got = _cut(x, sr, n_t, seed=i)
        assert [w for w, _ in got] == windows(len(whole), n_t), (sr, n)
        waves = S.resample_batch([seg for _, seg in got])
        for (w, seg), wave in zip(got, waves):
            assert len(seg) == w.length == len(wave)
            assert torch.equal(wave, whole[w.start : w.start + w.length]), (sr, n, w)


def test_segments_of_several_rates_in_one_batch_are_each_exact():
    rng = np.random.default_rng(0)
    pairs, expected = [], []
    for sr in (44100, 48000, 22050, 44100):
        x = (0.3 * rng.standard_normal(int(rng.uniform(2, 9) * sr))).astype(np.float32)
        whole = _whole(x, sr)
        for w, seg in _cut(x, sr, 608, seed=sr):
            pairs.append(seg)
            expected.append(whole[w.start : w.start + w.length])
    for got, want in zip(S.resample_batch(pairs), expected):
        assert torch.equal(got, want)


def test_eligible_rates():
    for sr in RATES + [37800, 176400, 192000]:
        assert S.eligible(sr, (608, 992)), sr
    assert not S.eligible(16000, (608,))  # nothing to resample
    assert not S.eligible(44056, (608,))  # 16 kHz groups of 2000 do not tile the 97,280 hop
    assert not S.eligible(0, (608,))


def test_short_files_make_no_windows_or_one():
    for sr in (44100, 8000):
        stream = WindowStream(608, rate=sr)
        assert stream.push(np.zeros(399 * sr // 16000, dtype=np.float32)) == []
        assert stream.finish() == []
        x = np.full(401 * sr // 16000 + 1, 0.1, dtype=np.float32)
        got = _cut(x, sr, 608, seed=1)
        assert [w.frames for w, _ in got] == [1]


def test_pipeline_resampling_with_the_batch_equals_resampling_in_workers(predictor, clips):
    """The GPU arrangement (input-rate chunks resampled inside `Predictor.launch`, mixed with 16 kHz
    chunks in one batch) run on the CPU gives the workers-resample results, which
    test_numerics holds to the reference."""
    assert not predictor.resample_on_device
    on_device = dataclasses.replace(predictor, resample_on_device=True)
    workers = run_pipeline(predictor, clips, layers=(2,), batch_size=7)
    batched = run_pipeline(on_device, clips, layers=(2,), batch_size=7)
    for name in CLIPS:
        a, b = workers[name].outputs[0], batched[name].outputs[0]
        # batches are made of whichever chunks arrive first, so float rounding may differ slightly
        np.testing.assert_allclose(b.embedding, a.embedding, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.frames, a.frames, atol=1e-5, rtol=0)


def test_launch_receives_input_rate_segments_when_deferred(predictor, clips, monkeypatch):
    """With `resample_on_device`, 44.1/48/22.05/8 kHz chunks reach the predictor at their own
    rate (the CPU did not resample them); 16 kHz chunks as samples."""
    seen = []
    on_device = dataclasses.replace(predictor, resample_on_device=True)
    real = type(on_device).launch

    def spy(self, chunks, *a, **k):
        seen.extend(c.rate if isinstance(c, S.RateChunk) else 16000 for c in chunks)
        return real(self, chunks, *a, **k)

    monkeypatch.setattr(type(on_device), "launch", spy)
    run_pipeline(on_device, clips, layers=(2,), batch_size=4, frames=False)
    assert {44100, 48000, 22050, 8000, 16000} <= set(seen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resampling_matches_the_whole_file_resampler():
    """The same chunks resampled on the GPU (TF32 off) agree with the CPU's whole-file result."""
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(7)
    for sr in RATES:
        x = (0.3 * rng.standard_normal(int(9.1 * sr))).astype(np.float32)
        whole = _whole(x, sr)
        got = _cut(x, sr, 608, seed=sr)
        for (w, _), wave in zip(got, S.resample_batch([s for _, s in got], "cuda")):
            assert wave.device.type == "cuda"
            err = (wave.cpu() - whole[w.start : w.start + w.length]).abs().max().item()
            assert err <= 1e-6, (sr, err)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pipeline_resamples_on_the_device_and_matches_reference(ckpts, clips, sd608):
    from matpac_cli.inference.predictor import Predictor

    ref608 = clip_frames(clips, sd608, (2,))

    p = Predictor.load(str(ckpts["tiny608"]), device="cuda", precision="fp32")
    assert p.resample_on_device
    got = run_pipeline(p, clips, layers=(2,), batch_size=7, frames=False)
    for name in CLIPS:
        err = np.abs(got[name].outputs[0].embedding[0].astype(np.float64) - ref608[name][2].mean(0)).max()
        assert err <= CLIP_ATOL, (name, err)
