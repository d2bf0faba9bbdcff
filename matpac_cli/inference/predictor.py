"""A loaded encoder (and the heads its checkpoint carries): numpy waveform chunks in, columns out.

Loads once, so a caller (the CLI, a notebook, a Ray actor) keeps one per process. The log-mel runs
on the encoder's device, per batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from matpac_cli.checkpoints.resolve import Resolved, resolve
from matpac_cli.config import FRONT_END, Device, EncoderDims, FrontEnd, pick_precision
from matpac_cli.encoder.resample import RateChunk, resample_batch
from matpac_cli.encoder.signal import downmix, windows
from matpac_cli.errors import InputError, UsageError


def pick_device(name: str | Device = "auto") -> str:
    """`auto` -> cuda, then mps, then cpu; an explicit device is checked against this machine,
    so a GPU that is not there fails before any download. The name torch takes."""
    import torch

    device = Device.parse(name)
    if device.is_auto:
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.is_cuda:
        if not torch.cuda.is_available():
            raise UsageError(f"device={device}: CUDA is not available on this machine", settings=("device",))
        if (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"device={device}: only {torch.cuda.device_count()} CUDA device(s)", settings=("device",))
    if device.is_mps and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device=mps: MPS is not available on this machine", settings=("device",))
    return device.name


def default_batch(device: str | Device) -> int:
    """Chunks per batch when none is asked for. CPU: 8 (fp32, 2 threads, benchmarks/cpu_vs_authors.py
    --batch-sweep: AMD EPYC with AVX-512, oneDNN, 87.6 ms per chunk at 8, 85.6 at 16, 85.8 at 32;
    Intel Xeon, plain layers, 141/141/134/151 ms at 4/8/16/32, within the rounds' spread of
    125-165 up to 16, so the smaller batch and its memory stay); a GPU: 128 (benchmarks/RESULTS.md:
    the encoder's rate still grows to 128 in bf16, and 128 chunks of ViT-B take under 1 GB)."""
    device = Device.parse(device)
    if device.is_cpu:
        return 8
    return 128 if device.is_cuda else 16


def pick_dtype(precision: str, device: str | Device):
    """The torch dtype of `config.pick_precision` (the rule's one home); bf16 support is asked
    of torch only on CUDA."""
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return table[pick_precision(precision, device, torch.cuda.is_bf16_supported)]


@dataclass
class Predictor:
    """An encoder ready to run; `heads_state` keeps the AudioSet head tensors if present."""

    resolved: Resolved
    encoder: object
    logmel: object
    device: str
    dtype: object
    heads_state: dict = field(default_factory=dict)
    fe: FrontEnd = FRONT_END
    threads: int | None = None  # torch CPU threads asked for; None: the default for the device
    # chunks arrive at their input rate and are resampled here, per batch (an encoder on a GPU:
    # the CPU then only decodes); False: the decoding workers resample (encoder/resample.py)
    resample_on_device: bool = False

    @property
    def dims(self) -> EncoderDims:
        return self.encoder.dims

    @property
    def on(self) -> Device:
        """The device the encoder runs on, parsed (`predictor.on.is_cuda`)."""
        return Device.parse(self.device)

    @classmethod
    def load(
        cls,
        model: str | Resolved,
        device: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        progress: bool = False,
        linear: str | None = None,
    ) -> Predictor:
        """Resolve (download if needed), verify and load a model by name, path or hf: spec.
        `linear` ("onednn" or "plain") sets the fp32 CPU encoder's linear layers; by default they
        are the faster on this CPU, measured once (`encoder.linear_choice`)."""
        import torch

        from matpac_cli.encoder.logmel import LogMel
        from matpac_cli.encoder.vit import MatpacEncoder
        from matpac_cli.inference.heads import split_head_keys

        dev = pick_device(device)
        on = Device.parse(dev)
        if on.is_cpu and linear is None:
            from matpac_cli.encoder.cpu import choose

            choose()  # a misspelt MATPAC_CPU_LINEAR is refused before any download
        if threads:
            torch.set_num_threads(threads)
        resolved = model if isinstance(model, Resolved) else resolve(model, progress=progress)
        enc_state, head_state = split_head_keys(resolved.load())
        resolved = dataclasses.replace(resolved, state=None)  # do not keep a second copy alive
        dtype = pick_dtype(precision, dev)
        if on.is_cuda:
            # the resampler is a convolution in fp32 at any precision: never TF32 (10-bit mantissa)
            torch.backends.cudnn.allow_tf32 = False
            if dtype == torch.float32:  # fp32 means fp32: no TF32 matmuls either
                torch.backends.cuda.matmul.allow_tf32 = False
        encoder = MatpacEncoder.from_state_dict(enc_state).to(dev, dtype)
        if on.is_cpu:
            from matpac_cli.encoder import onednn

            if linear is None and dtype == torch.float32 and onednn.available():
                from matpac_cli.encoder.linear_choice import chosen

                dims = encoder.dims
                linear = chosen(dims.width, dims.mlp_width, onednn.rows_for(dims))  # measured once per CPU
            onednn.pack(encoder, linear)  # oneDNN linear layers where they are the faster; else plain
        logmel = LogMel().to(dev)
        return cls(resolved, encoder, logmel, dev, dtype, head_state, threads=threads, resample_on_device=not on.is_cpu)

    def columns(self, waves: np.ndarray, lengths: np.ndarray, layers: tuple[int, ...]) -> dict[int, np.ndarray]:
        """(B, S) zero-padded 16 kHz chunks with valid lengths -> {layer: (B, C, E) float32}.

        Columns past a chunk's own width hold padding results and must be ignored by the caller.
        """
        import torch

        return self._launch(torch.from_numpy(waves), torch.from_numpy(lengths.astype(np.int64)), layers).result()

    def launch(self, chunks: list[np.ndarray], layers: tuple[int, ...], pooled: bool = False) -> Pending:
        """`columns` of waveform chunks of any lengths, returning before a GPU has finished, so
        the caller can prepare the next batch while this one computes.

        `pooled`: instead of every column, return each chunk's float64 sum over its valid columns,
        {layer: (B, E)}. That is all a clip embedding or a segment needs, and it keeps the
        per-column work and the copy back to the host off the critical path.
        """
        import torch

        pinned = self.on.is_cuda  # pinned staging lets the copy overlap the GPU's work
        lengths = torch.tensor([len(c) for c in chunks], dtype=torch.int64)
        if any(isinstance(c, RateChunk) for c in chunks):
            waves = self._resampled(chunks, pinned)
        else:
            waves = _staged(chunks, int(lengths.max()), pinned)
        return self._launch(waves, lengths.pin_memory() if pinned else lengths, layers, pooled)

    def _resampled(self, chunks: list, pinned: bool):
        """The batch's 16 kHz waves on the device: input-rate chunks resampled there (one
        convolution per rate), 16 kHz chunks copied over; zero past each chunk's length."""
        import torch

        rated = [i for i, c in enumerate(chunks) if isinstance(c, RateChunk)]
        rows: list = [None] * len(chunks)
        for i, wave in zip(rated, resample_batch([chunks[i] for i in rated], self.device, self.fe)):
            rows[i] = wave
        plain = [i for i, c in enumerate(chunks) if not isinstance(c, RateChunk)]
        if plain:
            host = _staged([chunks[i] for i in plain], max(len(chunks[i]) for i in plain), pinned)
            dev = host.to(self.device, non_blocking=pinned)
            for row, i in enumerate(plain):
                rows[i] = dev[row, : len(chunks[i])]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)

    def _launch(self, waves, lengths, layers: tuple[int, ...], pooled: bool = False) -> Pending:
        import torch

        from matpac_cli.encoder.vit import send

        cuda = self.on.is_cuda
        with torch.inference_mode():
            frames = torch.div(lengths - self.fe.win_length, self.fe.hop_length, rounding_mode="floor") + 1
            widths = torch.div(frames + 15, 16, rounding_mode="floor")  # on the host: no GPU sync
            w = waves.to(self.device, non_blocking=cuda)
            n = lengths.to(self.device, non_blocking=cuda)
            mel = self.logmel(w, n)
            out = self.encoder(mel.to(self.dtype), widths, layers)
            if pooled:
                valid = send((torch.arange(int(widths.max()))[None, :] < widths[:, None]).double(), self.device)
                out = {k: torch.einsum("bce,bc->be", v.double(), valid) for k, v in out.items()}
            else:
                out = {k: v.float() for k, v in out.items()}
            if not cuda:
                return Pending({k: v.cpu().numpy() for k, v in out.items()})
            host = {}
            for k, v in out.items():
                host[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                host[k].copy_(v, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(torch.device(self.device)))
            return Pending(host, done)

    def embed(
        self,
        wave: np.ndarray,
        sample_rate: int,
        layers: tuple[int, ...] = (-1,),
        batch_size: int = 16,
        channels_first: bool = False,
    ) -> np.ndarray:
        """Clip embedding of audio already in memory: (n,) or (n, channels) -> (E,), or (L, E)
        when several layers are asked for. Same front end, chunking and pooling as `matpac embed`.

        Float samples are taken as they are; integer PCM is scaled as soundfile reads it (int16 /
        32768, int32 / 2**31, int8 / 128, uint8 (x - 128) / 128). `channels_first=True` takes
        (channels, n) arrays; without it such an array is refused rather than guessed at."""
        import torch

        from matpac_cli.encoder.resample import resample

        mono = to_mono(wave, channels_first)
        w16 = resample(torch.from_numpy(np.ascontiguousarray(mono)), sample_rate).numpy()
        chunks = windows(len(w16), self.dims.n_t, self.fe)
        if not chunks:
            raise InputError("<array>", "too short: at least 400 samples at 16 kHz are needed")
        total = np.zeros((len(layers), self.dims.embed_dim))
        for i in range(0, len(chunks), batch_size):
            group = chunks[i : i + batch_size]
            out = self.launch([w16[w.start : w.start + w.length] for w in group], layers, pooled=True).result()
            for b in range(len(group)):
                total += np.stack([out[layer][b] for layer in layers])
        emb = (total / sum(w.columns for w in chunks)).astype(np.float32)
        return emb[0] if len(layers) == 1 else emb


def _staged(chunks: list, width: int, pinned: bool):
    """(B, width) float32 host tensor of zero-padded 16 kHz chunks (pinned for a GPU copy)."""
    import torch

    waves = torch.empty((len(chunks), width), dtype=torch.float32, pin_memory=pinned)
    for row, chunk in zip(waves, chunks):
        row[: len(chunk)] = torch.from_numpy(chunk)
        row[len(chunk) :] = 0
    return waves


# integer PCM -> float as soundfile (libsndfile) reads it: (x - offset) / scale
PCM_SCALE = {
    np.dtype(np.int8): (0, 128.0),
    np.dtype(np.uint8): (128, 128.0),
    np.dtype(np.int16): (0, 32768.0),
    np.dtype(np.int32): (0, 2.0**31),
}


def to_float(wave: np.ndarray) -> np.ndarray:
    """float32 samples of a float or integer-PCM array; any other dtype is refused."""
    x = np.asarray(wave)
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype in PCM_SCALE:
        offset, scale = PCM_SCALE[x.dtype]
        return ((x.astype(np.float64) - offset) / scale).astype(np.float32)
    raise InputError(
        "<array>",
        f"samples of dtype {x.dtype} are not supported; give float samples or int8, uint8, int16 or int32 PCM",
    )


def to_mono(wave: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """(n,), (n, channels) or, with `channels_first`, (channels, n) -> finite mono float32 (n,).

    Audio has far more samples than channels, so a 2-D array with more columns than rows is
    (channels, n): without `channels_first` it is refused, never read as thousands of channels."""
    x = to_float(wave)
    if x.size == 0:
        raise InputError("<array>", f"no samples (shape {x.shape})")
    if x.ndim == 2:
        rows, cols = x.shape
        if rows < cols if not channels_first else rows > cols:
            looks, fix = (
                ("(samples, channels)", "drop channels_first=True")
                if channels_first
                else ("(channels, samples)", "pass channels_first=True")
            )
            raise InputError("<array>", f"shape {x.shape} looks like {looks}; {fix} or transpose it (wave.T)")
        x = downmix(np.ascontiguousarray(x.T if channels_first else x))
    if x.ndim != 1:
        raise InputError("<array>", f"expected samples shaped (n,) or (n, channels), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("<array>", "samples contain NaN or infinity")
    return x


class Pending:
    """A batch whose results may still be on their way back from the device."""

    def __init__(self, out: dict, done=None) -> None:
        self._out, self._done = out, done

    def result(self) -> dict[int, np.ndarray]:
        if self._done is not None:
            self._done.synchronize()
            self._out = {k: v.numpy() for k, v in self._out.items()}
            self._done = None
        return self._out
