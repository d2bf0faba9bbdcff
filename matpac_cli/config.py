"""Frozen settings: the front end every MATPAC checkpoint expects, the encoder geometry, and a
run's options.

The front-end numbers are the model contract (shared spec section 1); they are not options.
The encoder geometry is read off the weights (`EncoderDims.from_state_dict`), never off a name.
A run's options (`RunOptions`: device, precision, threads, batch size, workers, engine, address)
are parsed and checked once, when built, and then carried whole by every job's config; `Device`
is the one parser of a device name, so no other module tests device strings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from matpac_cli.errors import UsageError

PATCH = 16  # patch side, in mel bins and in frames


@dataclass(frozen=True)
class FrontEnd:
    """Audio -> normalised log-mel, as the authors' training preprocessing did it."""

    sample_rate: int = 16_000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 50.0
    f_max: float = 8000.0
    n_mels: int = 80
    norm_mean: float = -7.056
    norm_std: float = 4.193
    resample_lowpass_filter_width: int = 64
    resample_rolloff: float = 0.9475937167399596
    resample_beta: float = 14.769656459379492

    def n_frames(self, n_samples: int) -> int:
        """Frames of a `center=False` STFT: none below one window."""
        if n_samples < self.win_length:
            return 0
        return 1 + (n_samples - self.win_length) // self.hop_length

    def chunk_samples(self, n_t: int) -> int:
        """Samples that give exactly `n_t` frames (608 -> 97,520)."""
        return (n_t - 1) * self.hop_length + self.win_length

    def chunk_hop(self, n_t: int) -> int:
        """Sample offset between chunks so they tile the whole-file frames (608 -> 97,280)."""
        return n_t * self.hop_length

    def as_dict(self) -> dict:
        return asdict(self)


FRONT_END = FrontEnd()


@dataclass(frozen=True)
class EncoderDims:
    """ViT geometry, derived from a state dict so tiny test checkpoints use the same code."""

    width: int
    depth: int
    heads: int
    mlp_width: int
    n_t: int  # frames per chunk: 16 * grid columns of pos_embed
    n_freq: int = 5  # patch rows: 80 mel bins / 16

    @property
    def grid_cols(self) -> int:
        return self.n_t // PATCH

    @property
    def embed_dim(self) -> int:
        """Size of one time column's vector: the frequency tokens concatenated (3840 for ViT-B)."""
        return self.n_freq * self.width

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, object]) -> EncoderDims:
        from matpac_cli.errors import ModelError

        try:
            width = int(sd["cls_token"].shape[-1])
            pos_rows = int(sd["pos_embed"].shape[1])
            mlp_width = int(sd["student_encoder.blocks.0.mlp.fc1.weight"].shape[0])
        except KeyError as exc:
            raise ModelError(f"checkpoint lacks key {exc.args[0]!r}: not a MATPAC encoder") from None
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"student_encoder\.blocks\.(\d+)\.", k))}
        if not blocks:
            raise ModelError("checkpoint has no student_encoder.blocks.*: not a MATPAC encoder")
        depth = max(blocks) + 1
        n_freq = 5
        if width % 64 or (pos_rows - 1) % n_freq:
            raise ModelError(f"checkpoint geometry not understood: width {width}, pos_embed rows {pos_rows}")
        return cls(
            width=width,
            depth=depth,
            heads=width // 64,
            mlp_width=mlp_width,
            n_t=(pos_rows - 1) // n_freq * PATCH,
            n_freq=n_freq,
        )


DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Device:
    """A device as matpac spells it: `auto`, `cpu`, `cuda`, `cuda:N` or `mps` (any case).

    The one parser of a device name (`parse`), refused before torch is imported; whether this
    machine has the device is `predictor.pick_device`'s question, once torch is there. Its
    properties answer what every module asks of a device, so none tests the string itself."""

    kind: str = "auto"
    index: int | None = None  # cuda:N only

    @classmethod
    def parse(cls, name: str | Device | None) -> Device:
        if isinstance(name, Device):
            return name
        text = (name or "auto").lower()
        match = re.fullmatch(r"(auto|cpu|mps|cuda)(?::(\d{1,4}))?", text)
        if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
            raise UsageError(f"device={name}: expected auto, cpu, cuda, cuda:N or mps", settings=("device",))
        return cls(match.group(1), None if match.group(2) is None else int(match.group(2)))

    @property
    def name(self) -> str:
        """The name torch takes (`cuda:1`) and the manifest records."""
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    def __str__(self) -> str:
        return self.name

    @property
    def is_auto(self) -> bool:
        return self.kind == "auto"

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def is_mps(self) -> bool:
        return self.kind == "mps"


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("local", "ray")


def parse_precision(precision: str | None) -> str:
    """The precision as matpac spells it, refused before torch is imported."""
    text = (precision or "auto").lower()
    if text not in PRECISIONS:
        raise UsageError(f"precision={precision}: expected auto, fp32, bf16 or fp16", settings=("precision",))
    return text


def pick_precision(precision: str | None, device: str | Device, bf16: Callable[[], bool] = lambda: True) -> str:
    """The precision a run computes at, as matpac spells it: `auto` is bf16 on CUDA (fp16 where
    `bf16()` says the GPU lacks it; asked only on CUDA) and fp32 elsewhere, bf16 being measured
    slower on CPUs. The one home of the rule: the local predictor and a Ray cluster's actors
    both take their precision from here. The Ray driver cannot ask the actors' GPUs, so there
    `auto` means bf16 on CUDA whatever the GPU (as before)."""
    text = parse_precision(precision)
    if text != "auto":
        return text
    if not Device.parse(device).is_cuda:
        return "fp32"
    return "bf16" if bf16() else "fp16"


DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def precision_name(dtype: object) -> str | None:
    """A torch dtype's name as the precision setting spells it (`torch.bfloat16` -> `bf16`);
    None for a dtype matpac does not compute at. Takes the dtype as an object so this module
    never imports torch."""
    return DTYPE_NAMES.get(str(dtype).removeprefix("torch."))


def _count(value: int | None, setting: str) -> int | None:
    """A count where 0 (like None) means the default."""
    if value is not None and value < 0:
        raise UsageError(f"{setting}={value}: give a positive count, or 0 for the default", settings=(setting,))
    return value or None


@dataclass(frozen=True)
class RunOptions:
    """How a run computes, as one value: checked once, when built (the CLI builds it before any
    model loads; a library call gets the defaults), then carried whole by every job's config to
    the engine, so no option is passed piecemeal or checked again downstream.

    `batch_size` None, `workers` and `threads` None or 0: the device's default (predictor.default_batch,
    feed.default_workers; torch's own thread count). `address` is the Ray cluster's (`engine` ray;
    None: RAY_ADDRESS, else a local Ray instance)."""

    device: Device | str = Device()
    precision: str = "auto"
    threads: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    engine: str = "local"
    address: str | None = None

    def __post_init__(self) -> None:
        set_ = partial(object.__setattr__, self)
        set_("device", Device.parse(self.device))
        set_("precision", parse_precision(self.precision))
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"batch_size={self.batch_size}: give at least 1", settings=("batch_size",))
        set_("workers", _count(self.workers, "workers"))
        set_("threads", _count(self.threads, "threads"))
        engine = (self.engine or "local").lower()
        if engine not in ENGINES:
            raise UsageError(f"engine={self.engine}: expected {' or '.join(ENGINES)}", settings=("engine",))
        set_("engine", engine)


def cache_home() -> Path:
    """matpac's own cache folder: $XDG_CACHE_HOME/matpac, else ~/.cache/matpac (the library's
    default home, search indexes of files, the CPU's measured linear layers)."""
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "matpac"
