"""Sanity tests of the slow reference (tests/reference.py) itself.

These never import the production package: they check the reference against torch's own
primitives and against the shape / independence facts of the spec.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as R
import torch
import torch.nn.functional as F
import torchaudio

SR = 16000
HOP = 160
WIN = 400


def n_samples_for_frames(n_frames: int) -> int:
    return WIN + (n_frames - 1) * HOP


def make_wave(n: int, sr: int = SR, channels: int | None = None, seed: int = 0) -> np.ndarray:
    """A varied test signal: noise bursts plus a chirp, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 900 * t**2))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.7 * t + rng.uniform(0, 6))
    noise = 0.2 * env * rng.standard_normal(n)
    mono = (chirp + noise).astype(np.float32)
    if channels is None:
        return np.clip(mono, -1, 1)
    cols = [
        np.clip(mono * (0.5 + 0.5 * c) + 0.05 * rng.standard_normal(n).astype(np.float32), -1, 1)
        for c in range(channels)
    ]
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def sd():
    return R.make_checkpoint(width=128, depth=2, n_t=608, seed=0)


@pytest.fixture(scope="module")
def sd_as():
    return R.make_checkpoint(width=128, depth=2, n_t=992, seed=1, with_audioset_head=True)


# ------------------------------------------------------------------------------------------
# Checkpoint
# ------------------------------------------------------------------------------------------
def test_checkpoint_layout(sd):
    assert sd["cls_token"].shape == (1, 1, 128)
    assert sd["pos_embed"].shape == (1, 1 + 5 * 38, 128)
    assert sd["patch_embed.proj.weight"].shape == (128, 1, 16, 16)
    assert sd["patch_embed.proj.bias"].shape == (128,)
    for i in range(2):
        p = f"student_encoder.blocks.{i}."
        assert sd[p + "attn.qkv.weight"].shape == (384, 128)
        assert sd[p + "attn.qkv.bias"].shape == (384,)
        assert sd[p + "attn.proj.weight"].shape == (128, 128)
        assert sd[p + "mlp.fc1.weight"].shape == (512, 128)
        assert sd[p + "mlp.fc2.weight"].shape == (128, 512)
        for n in ("norm1", "norm2"):
            assert sd[p + n + ".weight"].shape == (128,)
            assert sd[p + n + ".bias"].shape == (128,)
    assert "student_encoder.blocks.2.norm1.weight" not in sd
    assert sd["student_encoder.norm.weight"].shape == (128,)
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert not any(k.startswith("head") for k in sd)
    geo = R.geometry(sd)
    assert geo == {"width": 128, "depth": 2, "heads": 2, "mlp_hidden": 512, "grid_cols": 38, "n_t": 608}


def test_checkpoint_deterministic_and_seeded():
    a = R.make_checkpoint(seed=3)
    b = R.make_checkpoint(seed=3)
    c = R.make_checkpoint(seed=4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["cls_token"], c["cls_token"])


def test_checkpoint_audioset_head(sd_as):
    assert sd_as["pos_embed"].shape == (1, 1 + 5 * 62, 128)
    assert R.geometry(sd_as)["n_t"] == 992
    assert sd_as["head_norm.running_mean"].shape == (128,)
    assert sd_as["head_norm.running_var"].shape == (128,)
    assert (sd_as["head_norm.running_var"] > 0).all()
    assert sd_as["head_norm.num_batches_tracked"].dtype == torch.int64
    assert sd_as["head_norm.num_batches_tracked"].ndim == 0
    assert sd_as["head.weight"].shape == (527, 128)
    assert sd_as["head.bias"].shape == (527,)


def test_checkpoint_real_geometry_rows():
    # 191 rows for 608 frames, 311 for 992 (spec 3); check through a cheap width-64 model
    assert R.make_checkpoint(width=64, depth=1, n_t=608)["pos_embed"].shape[1] == 191
    assert R.make_checkpoint(width=64, depth=1, n_t=992)["pos_embed"].shape[1] == 311


# ------------------------------------------------------------------------------------------
# Front end
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, frames", [(400, 1), (559, 1), (560, 2), (97_520, 608), (n_samples_for_frames(1300), 1300)])
def test_logmel_frame_count(n, frames):
    lm = R.reference_logmel(make_wave(n), SR)
    assert lm.shape == (80, frames)
    assert torch.isfinite(lm).all()


@pytest.mark.parametrize("sr", [16000, 22050, 44100, 48000])
def test_too_short_raises(sr):
    n16 = 399
    n = int(math.floor(n16 * sr / SR))  # resamples to at most 399 samples
    with pytest.raises(ValueError):
        R.reference_logmel(make_wave(n, sr), sr)
    with pytest.raises(ValueError):
        R.reference_frames(R.make_checkpoint(), make_wave(n, sr), sr)


def test_empty_and_int_input_rejected():
    with pytest.raises(ValueError):
        R.reference_logmel(np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(TypeError):
        R.reference_logmel(np.zeros(1000, dtype=np.int16), SR)


def test_logmel_matches_manual_stft():
    """The torchaudio MelSpectrogram call equals a hand-written periodic-Hann STFT + slaney fbank."""
    wave = make_wave(n_samples_for_frames(50), seed=5)
    x = wave.astype(np.float64)
    n_frames = 1 + (len(x) - WIN) // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)  # periodic Hann
    fb = (
        torchaudio.functional.melscale_fbanks(
            n_freqs=201, f_min=50.0, f_max=8000.0, n_mels=80, sample_rate=SR, norm="slaney", mel_scale="slaney"
        )
        .double()
        .numpy()
    )  # (201, 80)
    spec = np.zeros((201, n_frames))
    for i in range(n_frames):
        frame = x[i * HOP : i * HOP + WIN] * window
        spec[:, i] = np.abs(np.fft.rfft(frame, n=400)) ** 2
    mel = fb.T @ spec
    expected = (np.log(mel + np.finfo(np.float32).eps) + 7.056) / 4.193
    got = R.reference_logmel(wave, SR).numpy()
    # torchaudio builds its window and filterbank in float32 before the cast to float64, so
    # near-empty mel bins differ by ~1e-5 in the log domain; everything else agrees to ~1e-7.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.median(np.abs(got - expected)) < 1e-6


@pytest.mark.parametrize("sr", [22050, 44100, 48000])
def test_resampled_lengths_and_shapes(sd, sr):
    wave = make_wave(sr, sr)  # one second
    x = R.reference_waveform(wave, sr)
    assert x.shape == (16000,)
    lm = R.reference_logmel(wave, sr)
    assert lm.shape == (80, 98)  # 1 + (16000 - 400) // 160
    fr = R.reference_frames(sd, wave, sr)
    assert fr.shape == (7, 640)  # 98 -> padded 112 -> 7 columns


def test_resample_preserves_a_tone():
    sr = 48000
    t = np.arange(sr) / sr
    wave = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    x = R.reference_waveform(wave, sr).numpy()
    spec = np.abs(np.fft.rfft(x[2000:-2000]))
    freqs = np.fft.rfftfreq(len(x) - 4000, 1 / 16000)
    assert abs(freqs[np.argmax(spec)] - 1000) < 2
    t16 = np.arange(16000) / 16000
    np.testing.assert_allclose(x[200:-200], 0.5 * np.sin(2 * np.pi * 1000 * t16)[200:-200], atol=2e-3)


def test_resample_uses_spec_parameters():
    sr = 44100
    wave = make_wave(sr // 2, sr, seed=9)
    expected = torchaudio.functional.resample(
        torch.from_numpy(wave.astype(np.float64)),
        sr,
        16000,
        lowpass_filter_width=64,
        rolloff=0.9475937167399596,
        resampling_method="sinc_interp_kaiser",
        beta=14.769656459379492,
    )
    torch.testing.assert_close(R.reference_waveform(wave, sr), expected)
    default = torchaudio.functional.resample(torch.from_numpy(wave.astype(np.float64)), sr, 16000)
    assert not torch.allclose(expected, default, atol=1e-6)


def test_16k_is_not_resampled():
    wave = make_wave(5000)
    np.testing.assert_array_equal(R.reference_waveform(wave, SR).numpy(), wave.astype(np.float64))


@pytest.mark.parametrize("sr", [16000, 48000])
def test_stereo_is_mean_of_channels_before_resampling(sd, sr):
    stereo = make_wave(sr // 2, sr, channels=2, seed=2)
    mono = stereo.astype(np.float64).mean(axis=1)
    # mono first, then resample (in float64; the reference casts its input to float32 first,
    # so compare against the float64 path directly)
    expected = (
        torchaudio.functional.resample(
            torch.from_numpy(mono),
            sr,
            16000,
            lowpass_filter_width=64,
            rolloff=0.9475937167399596,
            resampling_method="sinc_interp_kaiser",
            beta=14.769656459379492,
        )
        if sr != SR
        else torch.from_numpy(mono)
    )
    torch.testing.assert_close(R.reference_waveform(stereo, sr), expected, rtol=1e-12, atol=1e-12)
    # through the whole model the float32 rounding of a float64 mono input is invisible
    np.testing.assert_allclose(
        R.reference_frames(sd, stereo, sr), R.reference_frames(sd, mono, sr), rtol=1e-4, atol=1e-4
    )
    dup = np.stack([mono, mono], axis=1).astype(np.float32)
    np.testing.assert_allclose(
        R.reference_frames(sd, dup, sr), R.reference_frames(sd, mono.astype(np.float32), sr), rtol=1e-12, atol=1e-12
    )


def test_stereo_three_channels(sd):
    multi = make_wave(8000, SR, channels=3, seed=4)
    x = R.reference_waveform(multi, SR)
    expected = torch.from_numpy(multi.astype(np.float64).mean(axis=1))
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    assert R.reference_logmel(multi, SR).shape == (80, 48)


# ------------------------------------------------------------------------------------------
# Padding, chunking, shapes
# ------------------------------------------------------------------------------------------
def test_pad_frames_zero_pads_after_normalisation():
    lm = torch.randn(80, 21, dtype=torch.float64)
    p = R.pad_frames(lm)
    assert p.shape == (80, 32)
    assert torch.equal(p[:, :21], lm)
    assert torch.equal(p[:, 21:], torch.zeros(80, 11, dtype=torch.float64))
    assert R.pad_frames(torch.randn(80, 32)).shape == (80, 32)


def test_split_chunks():
    widths = [c.shape[1] for c in R.split_chunks(torch.zeros(80, 1312), 608)]
    assert widths == [608, 608, 96]
    assert [c.shape[1] for c in R.split_chunks(torch.zeros(80, 608), 608)] == [608]
    assert [c.shape[1] for c in R.split_chunks(torch.zeros(80, 16), 608)] == [16]
    assert [c.shape[1] for c in R.split_chunks(torch.zeros(80, 1984), 992)] == [992, 992]


def test_exact_chunk_608_frames(sd):
    wave = make_wave(97_520)
    chunks = R.reference_chunks(sd, wave, SR)
    assert [c.shape for c in chunks] == [(80, 608)]
    fr = R.reference_frames(sd, wave, SR)
    assert fr.shape == (38, 640)
    assert np.isfinite(fr).all()


def test_long_file_1300_frames(sd):
    wave = make_wave(n_samples_for_frames(1300))
    chunks = R.reference_chunks(sd, wave, SR)
    assert [c.shape[1] for c in chunks] == [608, 608, 96]
    # the last chunk holds 84 real frames then 12 zero frames
    assert torch.equal(chunks[-1][:, 84:], torch.zeros(80, 12, dtype=chunks[-1].dtype))
    fr = R.reference_frames(sd, wave, SR)
    assert fr.shape == (82, 640)
    emb = R.reference_embedding(sd, wave, SR)
    assert emb.shape == (640,)
    np.testing.assert_allclose(emb, fr.mean(axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, cols", [(400, 1), (400 + 14 * HOP, 1), (400 + 15 * HOP, 1), (400 + 16 * HOP, 2)])
def test_short_files_one_or_two_columns(sd, n, cols):
    wave = make_wave(n, seed=7)
    fr = R.reference_frames(sd, wave, SR)
    assert fr.shape == (cols, 640)
    assert np.isfinite(fr).all()
    assert R.reference_embedding(sd, wave, SR).shape == (640,)


def test_chunks_are_independent(sd):
    long_wave = make_wave(n_samples_for_frames(1300), seed=11)
    full = R.reference_frames(sd, long_wave, SR)
    # first chunk: the first 97,520 samples are exactly frames 0..607
    first = R.reference_frames(sd, long_wave[:97_520], SR)
    np.testing.assert_allclose(first, full[:38], rtol=1e-9, atol=1e-9)
    # second chunk alone: hop of 608 frames = 97,280 samples, positions restart at 0
    second = R.reference_frames(sd, long_wave[97_280 : 97_280 + 97_520], SR)
    np.testing.assert_allclose(second, full[38:76], rtol=1e-9, atol=1e-9)
    # the short last chunk alone: frames 1216..1299 (84 frames, padded to 96)
    tail = R.reference_frames(sd, long_wave[2 * 97_280 :], SR)
    assert tail.shape == (6, 640)
    np.testing.assert_allclose(tail, full[76:], rtol=1e-9, atol=1e-9)
    # and the clip embedding is the mean over all 82 columns, not a mean of chunk means
    emb = R.reference_embedding(sd, long_wave, SR)
    chunk_means = np.mean([first.mean(0), second.mean(0), tail.mean(0)], axis=0)
    np.testing.assert_allclose(emb, (first.sum(0) + second.sum(0) + tail.sum(0)) / 82, rtol=1e-9, atol=1e-9)
    assert not np.allclose(emb, chunk_means, atol=1e-6)


def test_positions_matter(sd):
    """Shifting a chunk's content in time changes its tokens (positions are added)."""
    wave = make_wave(97_520, seed=12)
    fr = R.reference_frames(sd, wave, SR)
    sd2 = dict(sd)
    sd2["pos_embed"] = torch.zeros_like(sd["pos_embed"])
    fr2 = R.reference_frames(sd2, wave, SR)
    assert not np.allclose(fr, fr2, atol=1e-3)


def test_layers(sd):
    wave = make_wave(20_000, seed=3)
    last = R.reference_frames(sd, wave, SR)
    np.testing.assert_array_equal(R.reference_frames(sd, wave, SR, layer=2), last)
    first = R.reference_frames(sd, wave, SR, layer=1)
    assert first.shape == last.shape
    assert not np.allclose(first, last, atol=1e-3)
    for bad in (0, 3, 12, -1):
        with pytest.raises(ValueError):
            R.reference_frames(sd, wave, SR, layer=bad)
    np.testing.assert_allclose(R.reference_embedding(sd, wave, SR, layer=1), first.mean(0), rtol=1e-12, atol=1e-12)


def test_column_layout_f_order(sd):
    """Column t's dims f*W..f*W+W-1 come from frequency row f (token f * n_cols + t)."""
    wave = make_wave(n_samples_for_frames(64), seed=8)
    chunk = R.reference_chunks(sd, wave, SR)[0]
    tokens = R.encode_chunk(sd, chunk)
    n_cols = 4
    assert tokens.shape == (5 * n_cols, 128)
    fr = R.reference_frames(sd, wave, SR)
    for t in range(n_cols):
        for f in range(5):
            np.testing.assert_array_equal(fr[t, f * 128 : (f + 1) * 128], tokens[f * n_cols + t].numpy())


# ------------------------------------------------------------------------------------------
# Building blocks against torch
# ------------------------------------------------------------------------------------------
def test_attention_matches_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(37, 64, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    got = R.attention(q, k, v, 64**-0.5)
    expected = F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None])[0, 0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_multi_head_attention_matches_sdpa():
    g = torch.Generator().manual_seed(1)
    n, width, heads = 23, 192, 3
    x = torch.randn(n, width, generator=g, dtype=torch.float64)
    qkv_w = torch.randn(3 * width, width, generator=g, dtype=torch.float64) / math.sqrt(width)
    qkv_b = torch.randn(3 * width, generator=g, dtype=torch.float64) * 0.1
    proj_w = torch.randn(width, width, generator=g, dtype=torch.float64) / math.sqrt(width)
    proj_b = torch.randn(width, generator=g, dtype=torch.float64) * 0.1
    got = R.multi_head_self_attention(x, qkv_w, qkv_b, proj_w, proj_b, heads)
    # timm-style: qkv -> (N, 3, H, 64) -> (3, H, N, 64)
    qkv = F.linear(x, qkv_w, qkv_b).reshape(n, 3, heads, 64).permute(1, 2, 0, 3)
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (H, N, 64)
    expected = F.linear(o.transpose(0, 1).reshape(n, width), proj_w, proj_b)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_layer_norm_matches_torch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(11, 96, generator=g, dtype=torch.float64) * 3 + 1
    w = torch.randn(96, generator=g, dtype=torch.float64)
    b = torch.randn(96, generator=g, dtype=torch.float64)
    torch.testing.assert_close(R.layer_norm(x, w, b), F.layer_norm(x, (96,), w, b, eps=1e-6), rtol=1e-10, atol=1e-10)


def test_gelu_matches_torch():
    x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    torch.testing.assert_close(R.gelu(x), F.gelu(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(R.gelu(x), F.gelu(x, approximate="tanh"), atol=1e-6)


def test_patch_embed_matches_conv2d():
    g = torch.Generator().manual_seed(3)
    chunk = torch.randn(80, 96, generator=g, dtype=torch.float64)
    w = torch.randn(32, 1, 16, 16, generator=g, dtype=torch.float64)
    b = torch.randn(32, generator=g, dtype=torch.float64)
    got = R.patch_embed(chunk, w, b)
    conv = F.conv2d(chunk[None, None], w, b, stride=16)  # (1, 32, 5, 6)
    expected = conv.flatten(2)[0].T  # row-major over (f, t): index f * 6 + t
    assert got.shape == (30, 32)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_softmax_rows_sum_to_one():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(17, 29, generator=g, dtype=torch.float64) * 30
    p = R.softmax_rows(s)
    torch.testing.assert_close(p.sum(-1), torch.ones(17, dtype=torch.float64))
    torch.testing.assert_close(p, torch.softmax(s, dim=-1))
    assert (p >= 0).all()


def _torch_encoder(sd, chunk: torch.Tensor, layer: int | None = None) -> torch.Tensor:
    """A second, compact implementation from torch primitives, to cross-check the wiring."""
    p = {k: v.double() for k, v in sd.items()}
    width = p["cls_token"].shape[-1]
    heads = width // 64
    depth = R.geometry(sd)["depth"]
    layer = depth if layer is None else layer
    n_cols = chunk.shape[1] // 16
    x = F.conv2d(
        chunk[None, None].double(), p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=16
    )  # (1, W, 5, n_cols)
    x = x.flatten(2).transpose(1, 2)  # (1, 5*n_cols, W)
    grid = p["pos_embed"][:, 1:].reshape(1, 5, -1, width)[:, :, :n_cols].reshape(1, -1, width)
    x = x + grid
    cls = p["cls_token"] + p["pos_embed"][:, :1]
    x = torch.cat([cls, x], dim=1)
    n = x.shape[1]
    for i in range(depth):
        b = f"student_encoder.blocks.{i}."
        h = F.layer_norm(x, (width,), p[b + "norm1.weight"], p[b + "norm1.bias"], 1e-6)
        qkv = F.linear(h, p[b + "attn.qkv.weight"], p[b + "attn.qkv.bias"])
        qkv = qkv.reshape(1, n, 3, heads, 64).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(1, n, width)
        x = x + F.linear(o, p[b + "attn.proj.weight"], p[b + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), p[b + "norm2.weight"], p[b + "norm2.bias"], 1e-6)
        h = F.linear(
            F.gelu(F.linear(h, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"])),
            p[b + "mlp.fc2.weight"],
            p[b + "mlp.fc2.bias"],
        )
        x = x + h
        if i + 1 == layer and layer < depth:
            return x[0, 1:]
    x = F.layer_norm(x, (width,), p["student_encoder.norm.weight"], p["student_encoder.norm.bias"], 1e-6)
    return x[0, 1:]


@pytest.mark.parametrize("n_frames", [16, 96, 608])
@pytest.mark.parametrize("layer", [1, None])
def test_encoder_matches_torch_primitives(sd, n_frames, layer):
    g = torch.Generator().manual_seed(n_frames)
    chunk = torch.randn(80, n_frames, generator=g, dtype=torch.float64)
    got = R.encode_chunk(sd, chunk, layer)
    expected = _torch_encoder(sd, chunk, layer)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_encoder_three_heads_wider_mlp():
    sd3 = R.make_checkpoint(width=192, depth=3, n_t=96, seed=5, mlp_ratio=2)
    geo = R.geometry(sd3)
    assert (geo["heads"], geo["depth"], geo["mlp_hidden"], geo["n_t"]) == (3, 3, 384, 96)
    chunk = torch.randn(80, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for layer in (1, 2, 3):
        torch.testing.assert_close(
            R.encode_chunk(sd3, chunk, layer), _torch_encoder(sd3, chunk, layer), rtol=1e-9, atol=1e-9
        )
    with pytest.raises(ValueError):
        R.encode_chunk(sd3, torch.zeros(80, 112, dtype=torch.float64))  # > n_t columns


def test_attention_is_not_uniform(sd):
    """The random checkpoint's attention is far from uniform, so attention bugs show."""
    chunk = R.reference_chunks(sd, make_wave(97_520, seed=6), SR)[0]
    p = "student_encoder.blocks.0."
    x = R.patch_embed(chunk, R._p(sd, "patch_embed.proj.weight"), R._p(sd, "patch_embed.proj.bias"))
    h = R.layer_norm(x, R._p(sd, p + "norm1.weight"), R._p(sd, p + "norm1.bias"))
    qkv = R.linear(h, R._p(sd, p + "attn.qkv.weight"), R._p(sd, p + "attn.qkv.bias"))
    qkv = qkv.reshape(len(h), 3, 2, 64)
    probs = R.softmax_rows(qkv[:, 0, 0] @ qkv[:, 1, 0].T / 8)
    assert probs.max(dim=-1).values.mean() > 5.0 / len(h)


# ------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------
def test_probe_softmax_and_sigmoid():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal(640)
    w = rng.standard_normal((10, 640)) * 0.1
    b = rng.standard_normal(10)
    logits = w @ emb + b
    sm = R.reference_probe_scores(emb, w, b, "softmax")
    assert sm.shape == (10,)
    assert abs(sm.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(sm, torch.softmax(torch.from_numpy(logits), 0).numpy(), rtol=1e-12)
    sg = R.reference_probe_scores(emb, w, b, "sigmoid")
    np.testing.assert_allclose(sg, torch.sigmoid(torch.from_numpy(logits)).numpy(), rtol=1e-12)
    batch = R.reference_probe_scores(np.stack([emb, emb * 2]), w, b, "softmax")
    assert batch.shape == (2, 10)
    np.testing.assert_allclose(batch.sum(-1), [1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(batch[0], sm, rtol=1e-12)
    with pytest.raises(ValueError):
        R.reference_probe_scores(emb, w, b, "relu")


def test_probe_standardisation():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal(640)
    w = rng.standard_normal((5, 640)) * 0.1
    b = rng.standard_normal(5)
    mean = rng.standard_normal(640)
    scale = rng.uniform(0.5, 2, 640)
    got = R.reference_probe_scores(emb, w, b, "sigmoid", mean=mean, scale=scale)
    expected = 1 / (1 + np.exp(-(w @ ((emb - mean) / scale) + b)))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert not np.allclose(got, R.reference_probe_scores(emb, w, b, "sigmoid"))
    with pytest.raises(ValueError):
        R.reference_probe_scores(emb, w, b, "sigmoid", mean=mean)


def test_audioset_scores(sd_as):
    wave = make_wave(n_samples_for_frames(1100), seed=13)  # 1100 -> 1104 frames: 992 + 112
    chunks = R.reference_chunks(sd_as, wave, SR)
    assert [c.shape[1] for c in chunks] == [992, 112]
    scores = R.reference_audioset_scores(sd_as, wave, SR)
    assert scores.shape == (527,)
    assert ((scores > 0) & (scores < 1)).all()
    # recompute from the last-layer frames with torch BatchNorm1d(affine=False) in eval mode
    fr = R.reference_frames(sd_as, wave, SR)  # (69, 640)
    assert fr.shape == (69, 640)
    per_col = fr.reshape(69, 5, 128).mean(axis=1)  # mean of the 5 frequency tokens
    pooled = torch.from_numpy(per_col.mean(axis=0))[None]
    bn = torch.nn.BatchNorm1d(128, affine=False, eps=1e-5).double()
    bn.running_mean.copy_(sd_as["head_norm.running_mean"].double())
    bn.running_var.copy_(sd_as["head_norm.running_var"].double())
    bn.eval()
    logits = F.linear(bn(pooled), sd_as["head.weight"].double(), sd_as["head.bias"].double())[0]
    np.testing.assert_allclose(scores, torch.sigmoid(logits).numpy(), rtol=1e-9, atol=1e-12)
    # spread out, so a wrong pooling shows
    assert scores.std() > 0.05
