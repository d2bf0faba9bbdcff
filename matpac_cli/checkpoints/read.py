"""Read a weights file safely and check it: the one way matpac turns bytes into tensors.

Pickles are only read with `torch.load(weights_only=True)` (no code in a checkpoint ever runs);
every tensor must be finite; keys are mapped onto the release layout (model contract section 6)
and checked strictly against the encoder. Nothing here downloads (`downloads.py`) or resolves
names (`resolve.py`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from matpac_cli.errors import ModelError, one_line

# ---------------------------------------------------------------- loading


def check_encoder_keys(state: dict, where: str) -> None:
    """Full strict key and shape check without allocating the model (meta device)."""
    import torch

    from matpac_cli.config import EncoderDims
    from matpac_cli.encoder.vit import MatpacEncoder, check_state_dict

    enc, _ = split_head_keys(state)
    try:
        with torch.device("meta"):
            model = MatpacEncoder(EncoderDims.from_state_dict(enc))
        check_state_dict(model, enc)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None


def split_head_keys(state: dict) -> tuple[dict, dict]:
    """Encoder keys and head keys of a checkpoint (the encoder loads strictly without them)."""
    heads = {k: v for k, v in state.items() if k.startswith(("head.", "head_norm."))}
    return {k: v for k, v in state.items() if k not in heads}, heads


def has_audioset_head(state: dict) -> bool:
    """Whether a checkpoint carries the AudioSet classifier (`head_norm.*` and `head.*`)."""
    return all(k in state for k in ("head.weight", "head.bias", "head_norm.running_mean", "head_norm.running_var"))


def read_weights_file(
    path: Path, label: str = "checkpoint", fix: str = "a plain state dict of tensors or a .safetensors file"
) -> object:
    """Read a weights file without running any code from it; every failure is one ModelError line.

    `.safetensors` goes through safetensors, anything else through `torch.load(weights_only=True)`.
    `label` names the file in messages ("checkpoint", "probe file"); `fix` is what to give instead
    of a pickle that holds Python objects.
    """
    import pickle

    import torch

    where = f"cannot read {label} {path}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelError(f"{where}: no such file") from None
    except OSError as exc:
        raise ModelError(f"{where}: {exc.strerror or one_line(exc)}") from None
    if path.is_dir():
        raise ModelError(f"{where}: it is a folder, not a file")
    if size == 0:
        raise ModelError(f"{where}: empty file (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for the user
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise ModelError(f"{where}: {exc.strerror or one_line(exc)}") from None
    except OSError as exc:  # torch's zip reader on a cut file: EINVAL, not a file-system problem
        raise ModelError(f"{where}: truncated or damaged file ({exc.strerror or one_line(exc)})") from None
    except pickle.UnpicklingError as exc:
        raise ModelError(f"{where}: {_unpickling_reason(str(exc), fix)}") from None
    except EOFError:
        raise ModelError(f"{where}: the file ends early (truncated?)") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise ModelError(f"{where}: {_damaged_reason(exc, path.suffix == '.safetensors')}") from None


_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def _unpickling_reason(message: str, fix: str) -> str:
    """torch's weights-only unpickler refused the file: objects it will not build, or no pickle at all."""
    found = _GLOBAL.search(message)
    if found or "unsupported global" in message.lower():
        what = f" (unsupported global {found.group(1)})" if found else ""
        return (
            f"it holds Python objects beyond plain tensors{what}; matpac refuses to unpickle such "
            f"files for safety; it needs {fix}"
        )
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.lower().startswith("unsupported")), None)
    if detail is None:
        detail = next(
            (ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the doc"))),
            lines[0] if lines else "",
        )
    detail = detail.split(". ")[0][:120]
    return f"not a PyTorch checkpoint, or a damaged one ({detail or 'unreadable pickle'})"


def _damaged_reason(exc: Exception, safetensors: bool) -> str:
    """A file torch or safetensors could not parse: cut short, corrupted, or another format."""
    detail = one_line(exc).split(". ")[0][:160]
    if safetensors:
        detail = detail.removeprefix("Error while deserializing header: ")
        return f"not a valid .safetensors file, or a truncated one ({detail})"
    if "zip archive" in detail or "PytorchStreamReader" in detail:
        return f"truncated or damaged file ({detail})"
    return detail


def check_finite(tensors: dict, where: str) -> None:
    """Refuse NaN or infinite parameters, naming the first bad tensor.

    A sum per tensor is the cheap test (NaN and inf always survive it); only a tensor whose sum
    is not finite (possibly just an overflow) gets the exact element-wise check.
    """
    import torch

    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        if bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all()):
            continue
        kind = "NaN" if bool(torch.isnan(t).any()) else "infinite"
        raise ModelError(f"{where}: tensor {key} has {kind} values: refusing it")


def load_checkpoint(path: Path) -> dict:
    """Read a state dict safely, refuse non-finite weights, map it onto the release layout (spec section 6)."""
    import torch

    raw = read_weights_file(path, "checkpoint")
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict) and "cls_token" not in raw:
            raw = raw[wrapper]
    if not isinstance(raw, dict):
        raise ModelError(f"checkpoint {path} holds a {type(raw).__name__}, not a state dict of named tensors")
    odd = next((k for k, v in raw.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise ModelError(
            f"checkpoint {path} is not a flat state dict of tensors (key {odd!r} holds a {type(raw[odd]).__name__})"
        )
    if not raw:
        raise ModelError(f"checkpoint {path} holds an empty state dict")
    check_finite(raw, f"model {path}")
    return map_keys(raw, str(path))


def map_keys(sd: dict, where: str) -> dict:
    """Strip a wrapper prefix (`model.`, `encoder.` ...) so keys match the release layout."""
    cls_keys = [k for k in sd if k == "cls_token" or k.endswith(".cls_token")]
    if len(cls_keys) != 1:
        found = ", ".join(list(sd)[:6])
        raise ModelError(f"{where}: cannot find the encoder's cls_token (keys: {found} ...)")
    prefix = cls_keys[0][: -len("cls_token")]
    out = {}
    for key, value in sd.items():
        if prefix and not key.startswith(prefix):
            if key.startswith(("head.", "head_norm.")):
                out[key] = value
                continue
            raise ModelError(f"{where}: key {key!r} is outside the encoder prefix {prefix!r}")
        out[key[len(prefix) :]] = value
    if any(k.startswith("blocks.") for k in out) and not any(k.startswith("student_encoder.") for k in out):
        out = {("student_encoder." + k if k.startswith(("blocks.", "norm.")) else k): v for k, v in out.items()}
    return out
