"""Provenance written next to every output: what produced it, with which weights and settings."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime

from matpac_cli import __version__
from matpac_cli.config import FRONT_END
from matpac_cli.encoder.cpu import cpu_info


def _model(predictor, ran_on: str | None = None) -> dict:
    """One model's provenance; `ran_on`: the device the engine reported running it on, where
    that is not the predictor's own (a Ray cluster's actors)."""
    res = predictor.resolved
    return {
        "name": res.name,
        "source": res.source,
        "revision": (res.spec.revision if res.spec else None),
        "sha256": res.sha256,
        "geometry": vars(predictor.dims).copy(),
        "precision": str(predictor.dtype).replace("torch.", ""),
        "device": ran_on or predictor.device,
        "linear": getattr(predictor.encoder, "linear_kind", "plain"),
    }


def manifest(
    predictors: list, settings: dict, summary, argv: list[str] | None, heads: list, extra: dict | None = None
) -> dict:
    import torch
    import torchaudio

    return {
        "matpac_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": argv if argv is not None else sys.argv,
        "cwd": _cwd(),  # what the rows' relative paths are relative to (`outputs.earlier`)
        "models": [_model(p, getattr(summary, "ran_on", None)) for p in predictors],
        "heads": heads,
        "settings": settings,
        "front_end": FRONT_END.as_dict(),
        "host": _host(summary),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
        },
        "counts": {
            "computed": summary.done,
            "reused": summary.reused,
            "failed": len(summary.failures),
            **_kept(summary),
        },
        **(extra or {}),
    }


def _host(summary) -> dict:
    """The CPU this ran on, so that a figure says which CPU it was measured on: the machine that
    encoded, or for a Ray run (the engine says where its actors ran) only the driver's."""
    role = "ray driver" if getattr(summary, "ran_on", None) else "encoded here"
    return {"cpu": cpu_info(), "cpus": os.cpu_count(), "role": role}


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the folder was deleted under the run
        return ""


def _kept(summary) -> dict:
    """`update`'s counts, where it kept or pruned earlier rows: rows not of this run's files."""
    kept, pruned = getattr(summary, "kept", 0), getattr(summary, "pruned", 0)
    return {"kept": kept, "pruned": pruned} if kept or pruned else {}


# ---------------------------------------------------------------- reading one back

# The keys a reader uses, with the JSON types matpac writes them as: a manifest edited or forged
# into other types is refused in one line, not met later as a traceback.
_TOP = {
    "matpac_version": str,
    "created": str,
    "command": list,
    "cwd": str,
    "models": list,
    "heads": list,
    "settings": dict,
    "front_end": dict,
    "versions": dict,
    "counts": dict,
    "truncated": list,
    "output": dict,
}
_MODEL = {
    "name": str,
    "source": str,
    "revision": str,
    "sha256": str,
    "geometry": dict,
    "precision": str,
    "device": str,
    "linear": str,
}
_NUMBER = (int, float)


def check_manifest(data: object) -> str | None:
    """Why `data` is not a manifest matpac wrote (the first key of the wrong type), or None."""
    if not isinstance(data, dict) or "matpac_version" not in data:
        return "no matpac_version"
    bad = _wrong(data, _TOP, "")
    if bad:
        return bad
    for i, model in enumerate(data.get("models") or []):
        bad = _wrong(model, _MODEL, f"models[{i}].") if isinstance(model, dict) else f"models[{i}] is not an object"
        if bad:
            return bad
        if any(not _is(v, int) for v in (model.get("geometry") or {}).values()):
            return f"models[{i}].geometry holds a value that is not a whole number"
    if any(not isinstance(h, dict) for h in data.get("heads") or []):
        return "heads holds an entry that is not an object"
    layers = (data.get("settings") or {}).get("layers")
    if layers is not None and (not isinstance(layers, list) or not all(_is(v, int) for v in layers)):
        return "settings.layers is not a list of layer numbers"
    output = data.get("output") or {}
    for key, kind in (("threshold", _NUMBER), ("top_k", int)):
        if output.get(key) is not None and not _is(output[key], kind):
            return f"output.{key} is not a number"
    if any(not isinstance(p, str) for p in data.get("truncated") or []):
        return "truncated holds an entry that is not a path"
    return None


def _is(value: object, kind) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _wrong(data: dict, types: dict, prefix: str) -> str | None:
    for key, kind in types.items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            return f"{prefix}{key} is not a JSON {_NAMES[kind]}"
    return None


_NAMES = {str: "string", list: "list", dict: "object"}
