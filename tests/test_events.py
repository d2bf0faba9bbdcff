"""A run's news reaches one events object through the Python API (`events.RunEvents`): the same
object the CLI's reporter is, with no callback left behind in any signature."""

from __future__ import annotations

import pytest
from conftest import write_audio

from matpac_cli.events import KeepFailures, Listeners, NoEvents


class Recorder(NoEvents):
    """A custom events object: keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def progress(self, item, seconds):
        self.calls.append(("progress", item.name, seconds))

    def failure(self, err):
        self.calls.append(("failure", err.path))

    def audio(self, seconds):
        self.calls.append(("audio", seconds))

    def reused(self, item, seconds):
        self.calls.append(("reused", item.name, seconds))

    def warning(self, text):
        self.calls.append(("warning", text))

    def encoding(self, items):
        self.calls.append(("encoding", [item.name for item in items]))

    def kinds(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]


def test_a_custom_events_object_hears_the_whole_run(predictor, tmp_path):
    from matpac_cli.config import RunOptions
    from matpac_cli.jobs.embed import EmbedConfig, embed
    from matpac_cli.pipeline.discovery import Item

    paths = [write_audio(tmp_path / f"a{i}.wav", 2.0 + i, seed=i) for i in range(2)]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF, but not audio" * 8)
    items = [Item(str(p), p) for p in [paths[0], bad, paths[1]]]
    config = EmbedConfig(out=tmp_path / "emb.npy", options=RunOptions(batch_size=2, workers=1))

    first = Recorder()
    summary = embed(items, predictor, config, first)
    assert [c[1] for c in first.kinds("progress")] == [i.name for i in items]  # once each, in order
    assert first.kinds("failure") == [("failure", str(bad))]
    assert [e.path for e in summary.failures] == [str(bad)]  # the job's summary keeps them too
    assert sum(c[1] for c in first.kinds("audio")) == pytest.approx(5.0, abs=0.2)
    assert first.kinds("reused") == [] and first.kinds("warning") == []

    again = Recorder()
    embed(items, predictor, config, again)
    assert [c[1] for c in again.kinds("reused")] == [str(p) for p in paths]
    assert [c[1] for c in again.kinds("progress")] == [str(bad)]  # only the file still to do
    assert again.kinds("audio") == []
    # told once which files it encodes: all of them, then only the one the library lacks
    assert first.kinds("encoding") == [("encoding", [i.name for i in items])]
    assert again.kinds("encoding") == [("encoding", [str(bad)])]

    cut = write_audio(tmp_path / "cut.wav", 3.0, seed=5)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the header promises twice what is there
    told = Recorder()
    embed([Item(str(cut), cut)], predictor, EmbedConfig(out=tmp_path / "cut.npy"), told)
    assert [c for c in told.kinds("warning") if "cut short" in c[1]], told.calls


def test_no_events_counts_a_reused_file_as_progress_and_listeners_take_functions():
    seen = []
    quiet = Listeners(progress=lambda item, s: seen.append((item, s)))
    quiet.reused("a.wav", 3.0)  # NoEvents' default: reuse is progress
    quiet.failure("ignored")
    assert seen == [("a.wav", 3.0)]
    failures: list = []
    kept = KeepFailures(quiet, failures)
    kept.failure("b.wav failed")
    kept.progress("b.wav", 0.0)
    assert failures == ["b.wav failed"] and seen[-1] == ("b.wav", 0.0)


def test_the_reporter_is_an_events_object():
    """The CLI's reporter has every method of the protocol, so a job takes it whole."""
    import inspect

    from matpac_cli.cli._reporter import Reporter
    from matpac_cli.events import RunEvents

    wanted = {n for n, f in inspect.getmembers(RunEvents, inspect.isfunction) if not n.startswith("_")}
    assert wanted == {"progress", "failure", "audio", "reused", "warning", "encoding"}
    for name in wanted:
        assert inspect.signature(getattr(Reporter, name)).parameters.keys() == (
            inspect.signature(getattr(RunEvents, name)).parameters.keys()
        ), name


def test_the_cli_knows_no_cluster():
    """Ray knowledge lives in engines/: the commands open an `engines.Engine` and never name Ray's
    modules or a cluster themselves."""
    import re
    from pathlib import Path

    cli = Path(__file__).resolve().parents[1] / "matpac_cli" / "cli"
    for path in cli.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"engines\.ray|^\s*(import|from) ray\b|Cluster\(|placement\(", text, re.M), path.name


def test_no_signature_takes_a_callback_for_one_kind_of_news():
    """The events object travels whole: no function below the CLI takes `on_audio`, `on_warning`
    (or any `on_<event>`) beside it, so a second path for the same news cannot creep back."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "matpac_cli"
    kinds = {f"on_{name}" for name in ("progress", "failure", "audio", "reused", "warning")}
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                found += [f"{path.relative_to(package)}: {a.arg}" for a in args if a.arg in kinds]
            elif isinstance(node, ast.Attribute) and node.attr in kinds:
                found.append(f"{path.relative_to(package)}: .{node.attr}")
    assert found == []
