"""Front end, chunking and the strict checkpoint loader, against the spec's own torchaudio calls.

Expected values are computed here with the torchaudio calls exactly as the spec (sections 1-2)
writes them, or with tests/reference.py; never with the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as R
import torch
import torchaudio

SR = 16000
EPS = torch.finfo(torch.float32).eps


# ---------------------------------------------------------------------------------------------
# The spec's calls, written out
# ---------------------------------------------------------------------------------------------
def spec_resample(x: torch.Tensor, orig: int) -> torch.Tensor:
    return torchaudio.functional.resample(
        x,
        orig,
        16000,
        lowpass_filter_width=64,
        rolloff=0.9475937167399596,
        resampling_method="sinc_interp_kaiser",
        beta=14.769656459379492,
    )


_MEL = torchaudio.transforms.MelSpectrogram(
    sample_rate=16000,
    n_fft=400,
    win_length=400,
    hop_length=160,
    f_min=50,
    f_max=8000,
    n_mels=80,
    power=2.0,
    center=False,
    norm="slaney",
    mel_scale="slaney",
)


def spec_logmel(x: torch.Tensor) -> torch.Tensor:
    """(n,) float32 16 kHz -> (80, 1 + (n - 400) // 160), normalised."""
    mel = _MEL(x.float())
    return (torch.log(mel + EPS) - (-7.056)) / 4.193


def wave(n: int, seed: int = 0, sr: int = SR) -> torch.Tensor:
    """Noise with a moving envelope plus a chirp: energy in every mel band, varying over time."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * (150 * t + 700 * t**2)) + 0.2 * (0.6 + 0.4 * np.sin(3 * t)) * rng.standard_normal(n)
    return torch.from_numpy(np.clip(x, -1, 1).astype(np.float32))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# ---------------------------------------------------------------------------------------------
# resample
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sr", [44100, 48000, 22050, 8000, 11025, 96000])
def test_resample_is_the_spec_call(sr):
    from matpac_cli.encoder.resample import resample

    x = wave(int(1.3 * sr), seed=1, sr=sr)
    got = resample(x, sr)
    expected = spec_resample(x, sr)
    assert got.shape == expected.shape == (math.ceil(len(x) * 16000 / sr),)
    assert max_err(got, expected) <= 1e-6
    # the spec's parameters matter: torchaudio's defaults give a visibly different signal
    default = torchaudio.functional.resample(x, sr, 16000)
    assert max_err(default, expected) > 1e-4


def test_resample_skips_16k():
    from matpac_cli.encoder.resample import resample

    x = wave(5000)
    assert torch.equal(resample(x, 16000), x)


@pytest.mark.parametrize("sr", [44100, 48000, 22050, 8000, 11025, 16000])
@pytest.mark.parametrize("blocks", ["irregular", "one_sample_then_big", "single"])
def test_stream_resampler_equals_whole_file(sr, blocks):
    """Feeding a file block by block gives what resampling it whole gives (spec 1.2)."""
    from matpac_cli.encoder.resample import StreamResampler

    n = int(3.7 * sr) + 7
    x = wave(n, seed=2, sr=sr)
    if blocks == "irregular":
        rng = np.random.default_rng(sr)
        cuts = np.sort(rng.choice(np.arange(1, n), size=9, replace=False))
        cuts = np.concatenate([[0], cuts, [n]])
    elif blocks == "one_sample_then_big":
        cuts = np.array([0, 1, 1, 2, n // 2, n])  # includes an empty block
    else:
        cuts = np.array([0, n])
    rs = StreamResampler(sr)
    parts = [rs.push(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    parts.append(rs.push(torch.zeros(0), final=True))
    got = torch.cat([torch.as_tensor(p).reshape(-1) for p in parts])
    expected = x if sr == 16000 else spec_resample(x, sr)
    assert got.shape == expected.shape
    assert max_err(got, expected) <= 1e-6


# ---------------------------------------------------------------------------------------------
# LogMel
# ---------------------------------------------------------------------------------------------
def test_logmel_batch_matches_spec_per_wave():
    """A zero-padded batch of different lengths: each row is its own spectrogram, normalised,
    zero-padded on the right to a multiple of 16 frames."""
    from matpac_cli.encoder.logmel import LogMel

    lengths = [97_520, 5_000, 400, 2_960, 97_679]
    xs = [wave(n, seed=i) for i, n in enumerate(lengths)]
    batch = torch.zeros(len(xs), max(lengths))
    for i, x in enumerate(xs):
        batch[i, : len(x)] = x
    out = LogMel()(batch, torch.tensor(lengths))
    assert out.shape[:2] == (len(xs), 80)
    assert out.shape[2] % 16 == 0 and out.shape[2] >= 608
    for i, x in enumerate(xs):
        expected = spec_logmel(x)
        frames = 1 + (len(x) - 400) // 160
        assert expected.shape == (80, frames)
        padded = -(-frames // 16) * 16
        assert max_err(out[i, :, :frames], expected) <= 1e-4, f"row {i}"
        assert torch.all(out[i, :, frames:padded] == 0), f"row {i}: padding is not zero"


def test_logmel_matches_float64_reference():
    from matpac_cli.encoder.logmel import LogMel

    x = wave(31_000, seed=3)
    out = LogMel()(x[None], torch.tensor([len(x)]))[0]
    ref = R.pad_frames(R.reference_logmel(x.numpy(), SR))
    assert out.shape == ref.shape == (80, 192)
    assert max_err(out, ref) <= 1e-3


def test_logmel_of_silence_is_log_eps():
    """Silence gives log(eps), normalised: the eps is float32's, added before the log."""
    from matpac_cli.encoder.logmel import LogMel

    out = LogMel()(torch.zeros(1, 1000), torch.tensor([1000]))[0]
    expected = (math.log(EPS) + 7.056) / 4.193
    frames = 1 + (1000 - 400) // 160
    assert torch.allclose(out[:, :frames], torch.full((80, frames), expected), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# chunking.windows
# ---------------------------------------------------------------------------------------------
def _windows(n, n_t=608):
    from matpac_cli.encoder.signal import windows

    return windows(n, n_t)


def test_windows_399_samples_gives_no_window():
    assert _windows(399) == []
    assert _windows(0) == []


def test_windows_400_samples_one_frame():
    (w,) = _windows(400)
    assert (w.index, w.start, w.length, w.frames, w.columns) == (0, 0, 400, 1, 1)
    assert w.times() == pytest.approx((0.0, 0.025))


def test_windows_exactly_one_chunk():
    (w,) = _windows(97_520)
    assert (w.start, w.length, w.frames, w.columns) == (0, 97_520, 608, 38)
    assert w.times() == pytest.approx((0.0, 6.095))


@pytest.mark.parametrize("n", [97_521, 97_600, 97_679])
def test_windows_tail_too_short_for_a_frame(n):
    """97,521..97,679 samples still make 608 frames: one chunk, no empty tail chunk."""
    assert 1 + (n - 400) // 160 == 608
    (w,) = _windows(n)
    assert (w.start, w.length, w.frames, w.columns) == (0, 97_520, 608, 38)


def test_windows_tail_that_adds_a_chunk():
    """97,680 samples make 609 frames: a second chunk of one frame (one column)."""
    a, b = _windows(97_680)
    assert (a.start, a.length, a.frames, a.columns) == (0, 97_520, 608, 38)
    assert (b.index, b.start, b.length, b.frames, b.columns) == (1, 97_280, 400, 1, 1)
    assert b.times() == pytest.approx((6.08, 6.105))


def test_windows_14s_three_chunks():
    ws = _windows(224_000)
    assert [(w.start, w.frames, w.columns) for w in ws] == [(0, 608, 38), (97_280, 608, 38), (194_560, 182, 12)]
    assert ws[-1].length == 224_000 - 194_560
    assert ws[1].times() == pytest.approx((6.08, 12.175))


def test_windows_992():
    ws = _windows(224_000, 992)
    assert [(w.start, w.frames, w.columns) for w in ws] == [(0, 992, 62), (158_720, 406, 26)]
    (w,) = _windows(158_960, 992)
    assert (w.length, w.frames, w.columns) == (158_960, 992, 62)


@pytest.mark.parametrize("n", [400, 2_560, 97_520, 97_680, 97_759, 97_760, 195_200, 200_001, 331_119])
@pytest.mark.parametrize("n_t", [608, 992])
def test_windows_tile_the_whole_file_frames(n, n_t):
    ws = _windows(n, n_t)
    total = 1 + (n - 400) // 160
    assert sum(w.frames for w in ws) == total
    for k, w in enumerate(ws):
        assert w.index == k and w.start == k * n_t * 160
        assert w.frames == min(n_t, total - k * n_t)
        assert w.columns == -(-w.frames // 16)
        assert w.length == min((n_t - 1) * 160 + 400, n - w.start)
        assert 1 + (w.length - 400) // 160 == w.frames
    assert all(w.frames == n_t for w in ws[:-1])


@pytest.mark.parametrize("n_t, n", [(608, 224_000), (608, 97_680), (992, 331_119)])
def test_chunk_logmel_equals_whole_file_frames(n_t, n):
    """Chunk k's log-mel is whole-file frames k*n_t ..; checked both with the spec's torchaudio
    calls on each window's samples and with the production LogMel on the batched windows."""
    from matpac_cli.encoder.logmel import LogMel

    x = wave(n, seed=4)
    whole = spec_logmel(x)
    ws = _windows(n, n_t)
    batch = torch.zeros(len(ws), max(w.length for w in ws))
    for b, w in enumerate(ws):
        seg = x[w.start : w.start + w.length]
        batch[b, : w.length] = seg
        own = spec_logmel(seg)
        assert own.shape == (80, w.frames)
        assert max_err(own, whole[:, k0(w, n_t) : k0(w, n_t) + w.frames]) <= 1e-4
    out = LogMel()(batch, torch.tensor([w.length for w in ws]))
    padded_whole = torch.nn.functional.pad(whole, (0, -(-whole.shape[1] // 16) * 16 - whole.shape[1]))
    for b, w in enumerate(ws):
        cols = w.columns * 16
        assert max_err(out[b, :, :cols], padded_whole[:, k0(w, n_t) : k0(w, n_t) + cols]) <= 1e-4


def k0(w, n_t):
    return w.index * n_t


# ---------------------------------------------------------------------------------------------
# Strict loader and geometry from the weights
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_sd():
    return R.make_checkpoint(width=64, depth=2, n_t=608, seed=7)


def _load(sd):
    from matpac_cli.encoder.vit import MatpacEncoder

    return MatpacEncoder.from_state_dict(sd)


def _refused(sd, key: str) -> str:
    from matpac_cli.errors import ModelError

    with pytest.raises(ModelError) as info:
        _load(sd)
    msg = str(info.value)
    assert key in msg, f"message does not name {key!r}: {msg}"
    return msg


@pytest.mark.parametrize(
    "key",
    [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "student_encoder.blocks.0.attn.qkv.bias",
        "student_encoder.blocks.1.mlp.fc2.weight",
        "student_encoder.blocks.1.norm2.bias",
        "student_encoder.blocks.0.mlp.fc1.weight",
        "student_encoder.norm.weight",
        "student_encoder.norm.bias",
    ],
)
def test_missing_key_is_named(small_sd, key):
    sd = dict(small_sd)
    del sd[key]
    _refused(sd, key)


@pytest.mark.parametrize("key", ["student_encoder.blocks.1.norm1.weight", "student_encoder.blocks.0.norm1.weight"])
def test_missing_norm1_weight_is_named(small_sd, key):
    """norm1.weight is what a naive loader counts blocks by: losing it must not shorten the
    model (and blame the block's other keys); the missing key itself is named."""
    sd = dict(small_sd)
    del sd[key]
    _refused(sd, key)


@pytest.mark.parametrize(
    "key",
    [
        "student_encoder.blocks.0.attn.q_bias",
        "decoder.pred.weight",
        "student_encoder.blocks.2.mlp.fc1.weight",
        "mask_token",
    ],
)
def test_extra_key_is_named(small_sd, key):
    sd = dict(small_sd)
    sd[key] = torch.zeros(64)
    _refused(sd, key)


@pytest.mark.parametrize(
    "key, shape",
    [
        ("student_encoder.blocks.1.attn.qkv.weight", (192, 65)),
        ("student_encoder.blocks.0.attn.proj.bias", (63,)),
        ("patch_embed.proj.weight", (64, 1, 16, 8)),
        ("student_encoder.norm.bias", (1, 64)),
        ("student_encoder.blocks.1.mlp.fc2.bias", (128,)),
    ],
)
def test_misshapen_key_is_named(small_sd, key, shape):
    sd = dict(small_sd)
    sd[key] = torch.zeros(shape)
    _refused(sd, key)


def test_strict_load_uses_every_weight(small_sd):
    """Nothing is left at a random or default init: every tensor is the checkpoint's."""
    model = _load(small_sd)
    state = model.state_dict()
    assert set(state) == set(small_sd)
    for k, v in small_sd.items():
        assert torch.equal(state[k].float(), v), k


def test_bad_checkpoint_through_cli_names_key(small_sd, tmp_path, capsys):
    """A user pointing `--model` at a damaged file gets exit 2 and the key's name, no output."""
    from conftest import write_audio

    from matpac_cli.cli import main

    sd = dict(small_sd)
    del sd["student_encoder.blocks.1.attn.proj.weight"]
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    clip = write_audio(tmp_path / "a.wav", 0.5)
    rc = main(
        ["embed", str(clip), "--out", str(tmp_path / "emb.npy"), "--model", str(bad), "--device", "cpu", "--quiet"]
    )
    assert rc == 2
    assert "student_encoder.blocks.1.attn.proj.weight" in capsys.readouterr().err
    assert not (tmp_path / "emb.npy").exists()


def test_geometry_of_tiny_checkpoints(ckpts):
    from matpac_cli.config import EncoderDims

    sd = torch.load(ckpts["tiny608"], weights_only=True)
    d = EncoderDims.from_state_dict(sd)
    assert (d.width, d.depth, d.heads, d.mlp_width, d.n_t, d.grid_cols, d.embed_dim) == (128, 2, 2, 512, 608, 38, 640)
    sd = torch.load(ckpts["tiny992_as"], weights_only=True)
    d = EncoderDims.from_state_dict(sd)
    assert (d.width, d.depth, d.heads, d.n_t, d.grid_cols, d.embed_dim) == (128, 2, 2, 992, 62, 640)


@pytest.mark.parametrize("n_t, rows", [(608, 191), (992, 311)])
def test_geometry_of_vit_base_shapes(n_t, rows):
    """The released ViT-B layout (shapes only, on the meta device): 768 wide, 12 blocks,
    12 heads, MLP 3072, 3840-d columns, n_t from the pos_embed rows."""
    from matpac_cli.config import EncoderDims

    shapes = {"cls_token": (1, 1, 768), "pos_embed": (1, rows, 768), "patch_embed.proj.weight": (768, 1, 16, 16)}
    for i in range(12):
        p = f"student_encoder.blocks.{i}."
        shapes.update(
            {
                p + "norm1.weight": (768,),
                p + "attn.qkv.weight": (2304, 768),
                p + "mlp.fc1.weight": (3072, 768),
                p + "mlp.fc2.weight": (768, 3072),
            }
        )
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    d = EncoderDims.from_state_dict(sd)
    assert (d.width, d.depth, d.heads, d.mlp_width, d.n_t, d.embed_dim) == (768, 12, 12, 3072, n_t, 3840)


def test_geometry_from_weights_not_file_name(ckpts, tmp_path):
    """A 608-frame checkpoint saved under the AudioSet (992) release name is still 608."""
    from matpac_cli.inference.predictor import Predictor

    target = tmp_path / "matpac_plus_as_48_1_map_enc_and_head.pt"
    target.write_bytes(ckpts["tiny608"].read_bytes())
    p = Predictor.load(str(target), device="cpu", precision="fp32")
    assert (p.dims.n_t, p.dims.width, p.dims.depth) == (608, 128, 2)


def test_odd_geometry_runs_like_the_reference():
    """Width 192 (3 heads), depth 3, MLP ratio 2, 320-frame chunks: the encoder built from these
    weights computes what the reference computes, for every layer and a short chunk."""
    from matpac_cli.encoder.vit import MatpacEncoder

    sd = R.make_checkpoint(width=192, depth=3, n_t=320, seed=11, mlp_ratio=2)
    enc = MatpacEncoder.from_state_dict(sd)
    d = enc.dims
    assert (d.width, d.depth, d.heads, d.mlp_width, d.n_t) == (192, 3, 3, 384, 320)
    g = torch.Generator().manual_seed(0)
    for frames in (320, 48):
        mel = torch.randn(80, frames, generator=g)
        with torch.no_grad():
            out = enc(mel[None], None, layers=(1, 2, 3))
        for layer in (1, 2, 3):
            expected = R.tokens_to_columns(R.encode_chunk(sd, mel.double(), layer), frames // 16)
            assert out[layer].shape == (1, frames // 16, 960)
            assert max_err(out[layer][0], expected) <= 1e-4, (frames, layer)
