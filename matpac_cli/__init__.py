"""matpac: tag and embed audio with the MATPAC family of self-supervised audio encoders.

The `matpac` command is a thin layer over this library. Import from `matpac_cli` itself, not
from the modules inside: they follow the data (cli -> jobs -> engines / outputs -> pipeline ->
inference -> checkpoints -> encoder) and may move; these names stay. `import matpac_cli` is
cheap: torch and the rest load on first use of a name that needs them.

Example (what `matpac embed ./clips --out emb.npy` runs, and an array embedded directly):

    from pathlib import Path
    import soundfile as sf
    from matpac_cli import EmbedConfig, Listeners, Predictor, RunOptions, discover, embed

    model = Predictor.load("matpac-plus", device="auto")  # a name, a checkpoint file or hf:OWNER/REPO
    samples, sample_rate = sf.read("clips/a.wav", dtype="float32")
    vec = model.embed(samples, sample_rate)  # (3840,) clip embedding, layer 12
    config = EmbedConfig(out=Path("emb.npy"), options=RunOptions(batch_size=16, workers=2))
    summary = embed(discover(["./clips"]), model, config, events=Listeners(failure=print))

The public names:

  Models      Predictor (load once: .load(name), .embed(samples, rate)), resolve (a model name,
              file or hf: spec -> a verified local file), keep_freed_memory (the CPU speed-up
              the `matpac` program applies once a model has loaded)
  Options     RunOptions (device, precision, threads, batch_size, workers, engine, address:
              checked once when built; carried by EmbedConfig and TagConfig), Device (the one
              parser of a device name)
  Events      RunEvents (what a run reports: progress, failure, audio, reused, warning,
              encoding), NoEvents (the silent default, to subclass), Listeners (plain functions per event)
  Inputs      discover (folders and paths -> Items), Item
  Embed       embed, EmbedConfig, Summary (what a run did)
  Tag         tag, TagConfig, Group (one encoder and its heads), build_heads, load_groups (the
              encoders of a tag run, each loaded once with its heads: `tag` takes them)
  Search      nearest (top-k cosine neighbours of query rows), duplicates (near-identical pairs;
              k-means cells from 8,192 rows, exact=True compares every pair: the same pairs),
              duplicate_groups (the pairs joined into groups, each in keep order: lossless first),
              NeighbourSearch (`nearest` from a cached vector index from 200,000 rows, re-ranked
              exactly; exact=True never), VectorIndex (the IVF index itself: build, nearest)
  Train       train, TrainConfig, read_labels (a labels folder or CSV), from_index (features
              from an embed output), embed_labelled (features by embedding the files)
  Library     library_info (what a library folder holds), prune_library (drop entries whose
              paths are gone, or of a model; a dry run unless yes=True), export_library (an embed
              output from the library, no encoding), library_embeddings (a library read as an
              embed output: what search, train and report take as their index)
  Playlists   playlist (a song radio around seeds, or a path from one track to another, from a
              library), PlaylistConfig, write_playlist (its tracks as M3U8, written atomically)
  Outputs     read_embeddings (an embed output: matrix, paths, manifest), read_tags, read_wide
              (a `tag --wide` output: one row per file), build_report
  Errors      MatpacError (base; one line for a person), UsageError, InputError (one file;
              the run goes on), ModelError, WeightsError, ChecksumError, OutputError
  __version__
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module it lives in: the one table of the public API (loaded on first access).
_HOMES = {
    "Predictor": "matpac_cli.inference.predictor",
    "resolve": "matpac_cli.checkpoints.resolve",
    "keep_freed_memory": "matpac_cli.encoder.cpu",
    "RunOptions": "matpac_cli.config",
    "Device": "matpac_cli.config",
    "RunEvents": "matpac_cli.events",
    "NoEvents": "matpac_cli.events",
    "Listeners": "matpac_cli.events",
    "discover": "matpac_cli.pipeline.discovery",
    "Item": "matpac_cli.pipeline.discovery",
    "embed": "matpac_cli.jobs.embed",
    "EmbedConfig": "matpac_cli.jobs.embed",
    "Summary": "matpac_cli.jobs.embed",
    "tag": "matpac_cli.jobs.tag",
    "TagConfig": "matpac_cli.jobs.tag",
    "Group": "matpac_cli.jobs.tag",
    "build_heads": "matpac_cli.jobs.tag",
    "load_groups": "matpac_cli.jobs.tag_groups",
    "nearest": "matpac_cli.jobs.similarity",
    "duplicates": "matpac_cli.jobs.dup_cells",
    "duplicate_groups": "matpac_cli.jobs.dup_groups",
    "NeighbourSearch": "matpac_cli.jobs.search_index",
    "VectorIndex": "matpac_cli.jobs.vector_index",
    "train": "matpac_cli.jobs.train",
    "TrainConfig": "matpac_cli.jobs.probe",
    "read_labels": "matpac_cli.jobs.train_data",
    "from_index": "matpac_cli.jobs.train_data",
    "embed_labelled": "matpac_cli.jobs.train_data",
    "library_info": "matpac_cli.jobs.library",
    "prune_library": "matpac_cli.jobs.library",
    "export_library": "matpac_cli.jobs.library",
    "library_embeddings": "matpac_cli.jobs.library",
    "playlist": "matpac_cli.jobs.playlist",
    "PlaylistConfig": "matpac_cli.jobs.playlist",
    "write_playlist": "matpac_cli.jobs.playlist",
    "read_embeddings": "matpac_cli.outputs.readers",
    "read_tags": "matpac_cli.outputs.tag_readers",
    "read_wide": "matpac_cli.outputs.tag_readers",
    "build_report": "matpac_cli.jobs.report",
    "MatpacError": "matpac_cli.errors",
    "UsageError": "matpac_cli.errors",
    "InputError": "matpac_cli.errors",
    "ModelError": "matpac_cli.errors",
    "WeightsError": "matpac_cli.errors",
    "ChecksumError": "matpac_cli.errors",
    "OutputError": "matpac_cli.errors",
}

__all__ = ["__version__", *_HOMES]


def __getattr__(name: str):
    """PEP 562: load a public name's module on first use and keep the name here. Anything else
    raises AttributeError, so `from matpac_cli import engines` still finds the subpackage."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'matpac_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names with the loaded ones, so help() and completion see the API before use."""
    return sorted({*globals(), *__all__})
