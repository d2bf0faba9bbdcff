"""Provenance written next to every output: what produced it, with which weights and settings."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone

from matpac_cli import __version__
from matpac_cli.config import FRONT_END


def _model(predictor) -> dict:
    res = predictor.resolved
    return {
        "name": res.name,
        "source": res.source,
        "revision": (res.spec.revision if res.spec else None),
        "sha256": res.sha256,
        "geometry": vars(predictor.dims).copy(),
        "precision": str(predictor.dtype).replace("torch.", ""),
        "device": predictor.device,
        "linear": getattr(predictor.encoder, "linear_kind", "plain"),
    }


def manifest(predictors: list, settings: dict, summary, argv: list[str] | None, heads: list,
             extra: dict | None = None) -> dict:
    import torch
    import torchaudio

    return {
        "matpac_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": argv if argv is not None else sys.argv,
        "models": [_model(p) for p in predictors],
        "heads": heads,
        "settings": settings,
        "front_end": FRONT_END.as_dict(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
        },
        "counts": {
            "computed": summary.done,
            "reused": summary.reused,
            "failed": len(summary.failures),
        },
        **(extra or {}),
    }
