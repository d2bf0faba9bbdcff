"""Which encoder each requested head runs on, and the checks that need no model.

Everything here runs before any weights are fetched or loaded, so a typo in a head or model
name, or an output that cannot be written, costs nothing.

Default encoders, when the user names no model (no --model, no MODEL:HEAD):
- sound-event heads (`fsd50k`/`sounds`, `esc50`, `us8k`) read the probes trained on the
  general-audio encoder, `matpac-plus`;
- every other probe head (`mtg_*`, `openmic`, `mtt`, `gtzan`, `nsynth`) the music encoder,
  `matpac-plus-music`;
- the AudioSet head (`audioset`/`events`) comes with its own checkpoint, `matpac-plus-audioset`.
With --model, every head uses that model (the AudioSet head still moves to its checkpoint when
the model is a registry model that does not carry it). A head from `matpac train` runs on the
encoder it was trained on; naming another registry model for it is refused here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from matpac_cli.checkpoints.registry import HeadSpec, load_registry
from matpac_cli.checkpoints.trained_head import check_planned, default_encoder, is_trained_head
from matpac_cli.errors import UsageError
from matpac_cli.inference.heads import probe_encoder_unknown
from matpac_cli.inference.probe_zip import HEAD_SUFFIXES, check_probes_cached
from matpac_cli.outputs import earlier, naming

DEFAULT_MODEL = "matpac-plus-music"
GENERAL_MODEL = "matpac-plus"
DEFAULT_HEADS = ("genre", "mood", "instrument")
SOUND_EVENT_HEADS = frozenset({"fsd50k", "esc50", "us8k"})


def default_model(spec: HeadSpec | None) -> str:
    """The encoder a head runs on when the user names none (see the module docstring)."""
    if spec is None:
        return DEFAULT_MODEL
    if spec.builtin:
        return spec.builtin
    return GENERAL_MODEL if spec.name in SOUND_EVENT_HEADS else DEFAULT_MODEL


def _split(arg: str, model: str | None) -> tuple[str | None, str]:
    """`MODEL:HEAD` -> (MODEL, HEAD) (the last colon, so hf:o/r@v:head works); else (model, arg)."""
    if ":" in arg and not Path(arg).exists():
        target, name = arg.rsplit(":", 1)
        if not target or not name:
            raise UsageError(f"heads={arg}: expected HEAD or MODEL:HEAD", settings=("heads",))
        return target, name
    return model, arg


def _spec(name: str) -> HeadSpec | None:
    """The registry head a --head value means (None for a probe file of an unknown head)."""
    registry = load_registry()
    path = Path(name).expanduser()
    if path.suffix not in HEAD_SUFFIXES:
        return registry.head(name)  # unknown names are refused here, before anything loads
    if path.is_dir():
        raise UsageError(f"head {name} is a folder, not a probe file")
    if not path.is_file():
        raise UsageError(f"head file {name} does not exist")
    if is_trained_head(path):  # `matpac train` wrote it: a head of its own, whatever its name
        return None
    if path.stem in registry.heads or any(path.stem in h.aliases for h in registry.heads.values()):
        return registry.head(path.stem)
    return next((h for h in registry.heads.values() if h.task == path.stem), None)


def plan_groups(head_args: Iterable[str], model: str | None, check: bool = True) -> list[tuple[str, list[str]]]:
    """Which encoder each requested head needs: [(model, [head args])], first-seen order.

    `model` is the --model value, None when the user gave none. With check=False the probes'
    encoders and cache are left for `check_encoders` (it reads model files: `tag` calls it once
    the inputs are found and the outputs locked)."""
    groups: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for arg in head_args:
        target, name = _split(arg, model)
        spec = _spec(name)
        key = spec.name if spec else Path(name).stem
        if key in seen:
            raise UsageError(f"a head was asked for twice: {key} ({seen[key]} and {arg})")
        seen[key] = arg
        trained = spec is None and is_trained_head(Path(name).expanduser())
        if target is None:
            target = default_encoder(Path(name).expanduser()) if trained else default_model(spec)
        elif trained:
            check_planned(Path(name).expanduser(), target)
        elif spec and spec.builtin and target == model and not _carries_audioset(model):
            target = spec.builtin
        groups.setdefault(target, []).append(name)
    plan = list(groups.items())
    if check:
        check_encoders(plan)
    return plan


def check_encoders(plan: list[tuple[str, list[str]]]) -> None:
    """Registry probes need a MATPAC++ encoder (a checkpoint file known by its content) and,
    offline, the probe zip in the cache: both said before any model loads."""
    from matpac_cli.checkpoints.resolve import model_file_spec

    registry = load_registry()
    probes = [
        (target, spec)
        for target, names in plan
        for name in names
        if Path(name).suffix not in HEAD_SUFFIXES and (spec := _spec(name)) and not spec.builtin
    ]
    for target, spec in probes:
        model = registry.models.get(target) or model_file_spec(target)
        if model is None or model.family not in registry.families:
            raise UsageError(probe_encoder_unknown(spec, target), settings=("model", "heads"))
    if probes:
        check_probes_cached()


def _carries_audioset(model: str) -> bool:
    """Registry models say so by name; a file or hf: model is checked after loading."""
    registry = load_registry()
    if model in registry.models:
        return any(h.builtin == model for h in registry.heads.values())
    return True


def check_output(out: Path, force: bool, manifest: Path | None = None) -> None:
    """An existing output that matpac's manifest does not vouch for is never replaced silently."""
    earlier.owned(out, manifest or naming.tags_manifest(out), force)


def describe(groups: list) -> str:
    """`heads: mtg_genre (genre), esc50 on matpac-plus-music; fsd50k (sounds) on matpac-plus` (+ how
    often): the name the `head` column holds, with the aliases a user may have typed."""
    text = "; ".join(f"{', '.join(_with_aliases(h) for h in g.heads)} on {g.model}" for g in groups)
    if len(groups) > 1:
        text += f" ({len(groups)} encoders, each run once per file)"
    return "heads: " + text


def _with_aliases(head) -> str:
    """`mtg_genre (genre)` for a registry head with aliases; a head file's own name as it is."""
    spec = load_registry().heads.get(head.name)
    if spec is None or not spec.aliases or head.tag_ids != spec.labels():
        return head.name
    return f"{head.name} ({', '.join(spec.aliases)})"
