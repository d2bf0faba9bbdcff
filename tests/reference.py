"""Slow, independent reference implementation of the MATPAC model contract.

Written from /work/shared/docs/matpac-spec.md (sections 1-6) only, without looking at the
production package, so tests can compare the two. Everything is spelled out plainly:
explicit loops over chunks and heads, manual LayerNorm / GELU / softmax / attention, and a
patch embedding built from explicit patch extraction plus a matmul. The encoder runs in
float64. The front end uses the torchaudio calls the spec names, in float64.

Public functions:
    make_checkpoint(...)            random state dict in the release layout (spec 6)
    reference_logmel(wave, sr)      normalised log-mel (80, T), spec 1
    reference_frames(sd, wave, sr, layer=None)   (n_columns, 5*W), spec 2-4
    reference_embedding(sd, wave, sr, layer=None) (5*W,), spec 4
    reference_probe_scores(embedding, weight, bias, activation, mean=None, scale=None)  spec 5
    reference_audioset_scores(sd, wave, sr)      (n_classes,), spec 5
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio

# ---------------------------------------------------------------------------------------------
# Constants straight from the spec
# ---------------------------------------------------------------------------------------------
TARGET_SR = 16000
N_FFT = 400
WIN_LENGTH = 400
HOP_LENGTH = 160
F_MIN = 50.0
F_MAX = 8000.0
N_MELS = 80
LOG_EPS = torch.finfo(torch.float32).eps
NORM_MEAN = -7.056
NORM_STD = 4.193

RESAMPLE_LOWPASS_FILTER_WIDTH = 64
RESAMPLE_ROLLOFF = 0.9475937167399596
RESAMPLE_BETA = 14.769656459379492

PATCH = 16
N_FREQ_ROWS = N_MELS // PATCH  # 5
HEAD_DIM = 64
LN_EPS = 1e-6
BN_EPS = 1e-5

DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------
# Random checkpoint in the release layout
# ---------------------------------------------------------------------------------------------
def make_checkpoint(
    width: int = 128,
    depth: int = 2,
    n_t: int = 608,
    seed: int = 0,
    with_audioset_head: bool = False,
    n_classes: int = 527,
    mlp_ratio: int = 4,
) -> dict[str, torch.Tensor]:
    """A random float32 state dict in the release layout of spec section 6.

    Scales are chosen so activations stay O(1) and attention is clearly non-uniform
    (q.k logits of a few units), and every bias / LayerNorm parameter is nonzero, so that
    wiring bugs (wrong qkv split, missing bias, wrong positions) change the output visibly.
    """
    if width % HEAD_DIM != 0:
        raise ValueError(f"width must be a multiple of {HEAD_DIM}, got {width}")
    if n_t % PATCH != 0:
        raise ValueError(f"n_t must be a multiple of {PATCH}, got {n_t}")
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean

    W = width
    hidden = mlp_ratio * W
    n_grid = N_FREQ_ROWS * (n_t // PATCH)
    sd: dict[str, torch.Tensor] = {}
    sd["cls_token"] = randn(1, 1, W, std=0.5)
    sd["pos_embed"] = randn(1, 1 + n_grid, W, std=0.5)
    sd["patch_embed.proj.weight"] = randn(W, 1, PATCH, PATCH, std=1.0 / PATCH)
    sd["patch_embed.proj.bias"] = randn(W, std=0.1)
    for i in range(depth):
        p = f"student_encoder.blocks.{i}."
        sd[p + "norm1.weight"] = randn(W, std=0.1, mean=1.0)
        sd[p + "norm1.bias"] = randn(W, std=0.1)
        # q and k entries ~ std 1.5 after a unit-variance LayerNorm output, so q.k * 64**-0.5 has
        # std ~ 1.5**2 ~ 2.3: attention clearly non-uniform but not one-hot. v smaller.
        sd[p + "attn.qkv.weight"] = torch.cat(
            [
                randn(W, W, std=1.5 / math.sqrt(W)),  # q
                randn(W, W, std=1.5 / math.sqrt(W)),  # k
                randn(W, W, std=1.0 / math.sqrt(W)),  # v
            ],
            dim=0,
        )
        sd[p + "attn.qkv.bias"] = randn(3 * W, std=0.1)
        sd[p + "attn.proj.weight"] = randn(W, W, std=0.7 / math.sqrt(W))
        sd[p + "attn.proj.bias"] = randn(W, std=0.1)
        sd[p + "norm2.weight"] = randn(W, std=0.1, mean=1.0)
        sd[p + "norm2.bias"] = randn(W, std=0.1)
        sd[p + "mlp.fc1.weight"] = randn(hidden, W, std=1.0 / math.sqrt(W))
        sd[p + "mlp.fc1.bias"] = randn(hidden, std=0.1)
        sd[p + "mlp.fc2.weight"] = randn(W, hidden, std=0.7 / math.sqrt(hidden))
        sd[p + "mlp.fc2.bias"] = randn(W, std=0.1)
    sd["student_encoder.norm.weight"] = randn(W, std=0.1, mean=1.0)
    sd["student_encoder.norm.bias"] = randn(W, std=0.1)
    if with_audioset_head:
        sd["head_norm.running_mean"] = randn(W, std=0.1)
        sd["head_norm.running_var"] = torch.rand(W, generator=g, dtype=torch.float32) * 0.2 + 0.05
        sd["head_norm.num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)
        sd["head.weight"] = randn(n_classes, W, std=1.0 / math.sqrt(W))
        sd["head.bias"] = randn(n_classes, std=0.5)
    return sd


# ---------------------------------------------------------------------------------------------
# Geometry, derived from the weights (spec 6)
# ---------------------------------------------------------------------------------------------
def geometry(state_dict) -> dict:
    width = state_dict["cls_token"].shape[-1]
    depth = 0
    while f"student_encoder.blocks.{depth}.norm1.weight" in state_dict:
        depth += 1
    n_grid = state_dict["pos_embed"].shape[1] - 1
    if n_grid % N_FREQ_ROWS != 0:
        raise ValueError(f"pos_embed has {n_grid} grid rows, not a multiple of {N_FREQ_ROWS}")
    grid_cols = n_grid // N_FREQ_ROWS
    return {
        "width": width,
        "depth": depth,
        "heads": width // HEAD_DIM,
        "mlp_hidden": state_dict["student_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        "grid_cols": grid_cols,
        "n_t": grid_cols * PATCH,
    }


def _p(state_dict, key) -> torch.Tensor:
    """Fetch a parameter as float64."""
    return state_dict[key].detach().to("cpu", DTYPE)


# ---------------------------------------------------------------------------------------------
# Front end (spec 1)
# ---------------------------------------------------------------------------------------------
def reference_waveform(wave: np.ndarray, sr: int) -> torch.Tensor:
    """float32 decode -> mono by mean over channels -> resample to 16 kHz. Returns float64 (n,)."""
    wave = np.asarray(wave)
    if not np.issubdtype(wave.dtype, np.floating):
        raise TypeError(f"expected float samples in [-1, 1], got dtype {wave.dtype}")
    wave = wave.astype(np.float32)  # "decode to float32"
    if wave.ndim == 2:  # (n, channels) as soundfile returns
        mono = np.zeros(wave.shape[0], dtype=np.float64)
        for c in range(wave.shape[1]):
            mono = mono + wave[:, c].astype(np.float64)
        mono = mono / wave.shape[1]
    elif wave.ndim == 1:
        mono = wave.astype(np.float64)
    else:
        raise ValueError(f"wave must be (n,) or (n, channels), got shape {wave.shape}")
    x = torch.from_numpy(mono).to(DTYPE)
    sr = int(sr)
    if sr != TARGET_SR:
        x = torchaudio.functional.resample(
            x,
            sr,
            TARGET_SR,
            lowpass_filter_width=RESAMPLE_LOWPASS_FILTER_WIDTH,
            rolloff=RESAMPLE_ROLLOFF,
            resampling_method="sinc_interp_kaiser",
            beta=RESAMPLE_BETA,
        )
    return x


def n_frames_for(n_samples: int) -> int:
    if n_samples < N_FFT:
        return 0
    return 1 + (n_samples - N_FFT) // HOP_LENGTH


def reference_logmel(wave: np.ndarray, sr: int) -> torch.Tensor:
    """Normalised log-mel (80, T) float64, T = 1 + (n16k - 400) // 160."""
    x = reference_waveform(wave, sr)
    n = x.shape[0]
    if n < N_FFT:
        raise ValueError(f"audio too short: {n} samples at 16 kHz, need at least {N_FFT}")
    mel_tf = torchaudio.transforms.MelSpectrogram(
        sample_rate=TARGET_SR,
        n_fft=N_FFT,
        win_length=WIN_LENGTH,
        hop_length=HOP_LENGTH,
        f_min=F_MIN,
        f_max=F_MAX,
        n_mels=N_MELS,
        power=2.0,
        center=False,
        norm="slaney",
        mel_scale="slaney",  # window_fn defaults to torch.hann_window
    ).to(DTYPE)
    mel = mel_tf(x)  # (80, T)
    logmel = torch.log(mel + LOG_EPS)
    out = (logmel - NORM_MEAN) / NORM_STD
    assert out.shape == (N_MELS, n_frames_for(n)), out.shape
    return out


# ---------------------------------------------------------------------------------------------
# Padding and chunking (spec 2)
# ---------------------------------------------------------------------------------------------
def pad_frames(logmel: torch.Tensor) -> torch.Tensor:
    """Zero-pad the frame axis on the right to a multiple of 16 (after normalisation)."""
    n_frames = logmel.shape[1]
    padded_len = ((n_frames + PATCH - 1) // PATCH) * PATCH
    out = torch.zeros(logmel.shape[0], padded_len, dtype=logmel.dtype)
    out[:, :n_frames] = logmel
    return out


def split_chunks(padded: torch.Tensor, n_t: int) -> list[torch.Tensor]:
    """Consecutive non-overlapping chunks of n_t frames; only the last may be shorter."""
    chunks = []
    start = 0
    total = padded.shape[1]
    while start < total:
        end = min(start + n_t, total)
        chunks.append(padded[:, start:end])
        start = end
    return chunks


# ---------------------------------------------------------------------------------------------
# Building blocks, written out
# ---------------------------------------------------------------------------------------------
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = LN_EPS) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU: 0.5 x (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x @ weight.T + bias


def softmax_rows(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, written out."""
    s = s - s.max(dim=-1, keepdim=True).values
    e = torch.exp(s)
    return e / e.sum(dim=-1, keepdim=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Single-head attention: softmax(q k^T * scale) v.  q, k, v: (N, d)."""
    scores = (q @ k.T) * scale
    probs = softmax_rows(scores)
    return probs @ v


def multi_head_self_attention(x: torch.Tensor, qkv_w, qkv_b, proj_w, proj_b, n_heads: int) -> torch.Tensor:
    """x: (N, W). qkv output splits as (3, heads, 64) -> q, k, v; heads concatenated in order."""
    n_tokens, width = x.shape
    head_dim = width // n_heads
    qkv = linear(x, qkv_w, qkv_b)  # (N, 3W)
    qkv = qkv.reshape(n_tokens, 3, n_heads, head_dim)
    scale = head_dim**-0.5
    head_outputs = []
    for h in range(n_heads):
        q = qkv[:, 0, h, :]
        k = qkv[:, 1, h, :]
        v = qkv[:, 2, h, :]
        head_outputs.append(attention(q, k, v, scale))
    out = torch.cat(head_outputs, dim=-1)  # (N, W), head h occupies dims h*64 .. h*64+63
    return linear(out, proj_w, proj_b)


def patch_embed(chunk: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """chunk (80, T) with T % 16 == 0 -> tokens (5 * T/16, W), token index f * n_cols + t.

    Equivalent to Conv2d(1, W, 16, stride 16) followed by flatten over (f, t) row-major.
    """
    n_rows = chunk.shape[0] // PATCH
    n_cols = chunk.shape[1] // PATCH
    width = weight.shape[0]
    w_flat = weight.reshape(width, PATCH * PATCH)  # kernel flattened over (freq, time)
    tokens = []
    for f in range(n_rows):
        for t in range(n_cols):
            patch = chunk[f * PATCH : (f + 1) * PATCH, t * PATCH : (t + 1) * PATCH]  # (freq, time)
            tokens.append(w_flat @ patch.reshape(PATCH * PATCH) + bias)
    return torch.stack(tokens, dim=0)


# ---------------------------------------------------------------------------------------------
# Encoder (spec 3)
# ---------------------------------------------------------------------------------------------
def encode_chunk(state_dict, chunk: torch.Tensor, layer: int | None = None) -> torch.Tensor:
    """One chunk (80, T<=n_t, T % 16 == 0) alone -> layer output without the class token,
    shape (5 * n_cols, W), token index f * n_cols + t.

    layer in 1..depth; layer == depth (or None) is the final-norm output, earlier layers are
    the residual stream after that block.
    """
    geo = geometry(state_dict)
    depth = geo["depth"]
    if layer is None:
        layer = depth
    if not (1 <= layer <= depth):
        raise ValueError(f"layer must be in 1..{depth}, got {layer}")
    n_cols = chunk.shape[1] // PATCH
    if chunk.shape[1] % PATCH != 0 or chunk.shape[0] != N_MELS:
        raise ValueError(f"bad chunk shape {tuple(chunk.shape)}")
    if n_cols > geo["grid_cols"]:
        raise ValueError(f"chunk has {n_cols} columns, pos_embed only {geo['grid_cols']}")
    chunk = chunk.to(DTYPE)
    W = geo["width"]

    x = patch_embed(
        chunk, _p(state_dict, "patch_embed.proj.weight"), _p(state_dict, "patch_embed.proj.bias")
    )  # (5*n_cols, W)
    pos = _p(state_dict, "pos_embed")[0]  # (1 + 5*G, W)
    grid = pos[1:].reshape(N_FREQ_ROWS, geo["grid_cols"], W)
    pos_tokens = []
    for f in range(N_FREQ_ROWS):
        for t in range(n_cols):
            pos_tokens.append(grid[f, t])
    x = x + torch.stack(pos_tokens, dim=0)
    cls = _p(state_dict, "cls_token")[0, 0] + pos[0]
    x = torch.cat([cls[None, :], x], dim=0)  # (1 + 5*n_cols, W)

    for i in range(depth):
        p = f"student_encoder.blocks.{i}."
        h = layer_norm(x, _p(state_dict, p + "norm1.weight"), _p(state_dict, p + "norm1.bias"))
        h = multi_head_self_attention(
            h,
            _p(state_dict, p + "attn.qkv.weight"),
            _p(state_dict, p + "attn.qkv.bias"),
            _p(state_dict, p + "attn.proj.weight"),
            _p(state_dict, p + "attn.proj.bias"),
            geo["heads"],
        )
        x = x + h
        h = layer_norm(x, _p(state_dict, p + "norm2.weight"), _p(state_dict, p + "norm2.bias"))
        h = linear(h, _p(state_dict, p + "mlp.fc1.weight"), _p(state_dict, p + "mlp.fc1.bias"))
        h = gelu(h)
        h = linear(h, _p(state_dict, p + "mlp.fc2.weight"), _p(state_dict, p + "mlp.fc2.bias"))
        x = x + h
        if i + 1 == layer and layer < depth:
            return x[1:]
    x = layer_norm(x, _p(state_dict, "student_encoder.norm.weight"), _p(state_dict, "student_encoder.norm.bias"))
    return x[1:]


def tokens_to_columns(tokens: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(5 * n_cols, W) -> (n_cols, 5 * W): per column the 5 frequency tokens in f order."""
    width = tokens.shape[1]
    out = torch.zeros(n_cols, N_FREQ_ROWS * width, dtype=tokens.dtype)
    for t in range(n_cols):
        for f in range(N_FREQ_ROWS):
            out[t, f * width : (f + 1) * width] = tokens[f * n_cols + t]
    return out


def reference_chunks(state_dict, wave: np.ndarray, sr: int) -> list[torch.Tensor]:
    """The padded log-mel cut into the chunks the encoder sees (for shape tests)."""
    n_t = geometry(state_dict)["n_t"]
    return split_chunks(pad_frames(reference_logmel(wave, sr)), n_t)


# ---------------------------------------------------------------------------------------------
# Embeddings (spec 4)
# ---------------------------------------------------------------------------------------------
def reference_frames(state_dict, wave: np.ndarray, sr: int, layer: int | None = None) -> np.ndarray:
    """Per-time-column embeddings (n_columns_total, 5*W), float64.

    layer: 1..depth, None = last (the final-norm output; "12" for ViT-B).
    """
    columns = []
    for chunk in reference_chunks(state_dict, wave, sr):
        n_cols = chunk.shape[1] // PATCH
        tokens = encode_chunk(state_dict, chunk, layer)
        columns.append(tokens_to_columns(tokens, n_cols))
    return torch.cat(columns, dim=0).numpy()


def reference_embedding(state_dict, wave: np.ndarray, sr: int, layer: int | None = None) -> np.ndarray:
    """Clip embedding (5*W,): mean over all time columns of all chunks."""
    frames = reference_frames(state_dict, wave, sr, layer)
    total = np.zeros(frames.shape[1], dtype=np.float64)
    for row in frames:
        total = total + row
    return total / frames.shape[0]


# ---------------------------------------------------------------------------------------------
# Heads (spec 5)
# ---------------------------------------------------------------------------------------------
def _sigmoid_np(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _softmax_np(z: np.ndarray) -> np.ndarray:
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def reference_probe_scores(
    embedding: np.ndarray, weight: np.ndarray, bias: np.ndarray, activation: str, mean=None, scale=None
) -> np.ndarray:
    """Optional (x - mean) / scale, then x @ weight.T + bias, then sigmoid or softmax.

    embedding: (D,) or (N, D); weight (C, D); bias (C,). Returns (C,) or (N, C), float64.
    """
    x = np.asarray(embedding, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    if (mean is None) != (scale is None):
        raise ValueError("mean and scale go together")
    if mean is not None:
        x = (x - np.asarray(mean, dtype=np.float64)) / np.asarray(scale, dtype=np.float64)
    logits = x @ w.T + b
    if activation == "sigmoid":
        return _sigmoid_np(logits)
    if activation == "softmax":
        return _softmax_np(logits)
    raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")


def reference_audioset_scores(state_dict, wave: np.ndarray, sr: int) -> np.ndarray:
    """AudioSet head: last-layer tokens; per column the MEAN of the 5 frequency tokens (W-d);
    mean over all columns of all chunks; BatchNorm eval without affine (eps 1e-5); linear; sigmoid.
    """
    per_column = []
    for chunk in reference_chunks(state_dict, wave, sr):
        n_cols = chunk.shape[1] // PATCH
        tokens = encode_chunk(state_dict, chunk, None)  # (5*n_cols, W)
        for t in range(n_cols):
            acc = torch.zeros(tokens.shape[1], dtype=DTYPE)
            for f in range(N_FREQ_ROWS):
                acc = acc + tokens[f * n_cols + t]
            per_column.append(acc / N_FREQ_ROWS)
    pooled = torch.stack(per_column, dim=0).mean(dim=0)  # (W,)
    rm = _p(state_dict, "head_norm.running_mean")
    rv = _p(state_dict, "head_norm.running_var")
    normed = (pooled - rm) / torch.sqrt(rv + BN_EPS)
    logits = linear(normed, _p(state_dict, "head.weight"), _p(state_dict, "head.bias"))
    return _sigmoid_np(logits.numpy())
