"""Errors below `cli/` name settings as the Python API spells them; the CLI alone turns them into
flags (`cli/_errors.py`), so the terminal still reads `--top-k` and a Python caller reads `top_k`."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest
from conftest import REPO, run_matpac

from matpac_cli.cli._errors import FLAGS, flagged, with_flags
from matpac_cli.errors import MatpacError, OutputError, UsageError

PACKAGE = REPO / "matpac_cli"
FLAG = re.compile(r"--[a-z]")

# A command line to type at a shell is quoted whole, flags and all (`matpac embed --out`,
# `ray start --head --port`): it is the same command for a Python user.
COMMAND = re.compile(r"`(?:matpac|ray) [^`]*`")

# Flag text below cli/ that is not a message: what matpac writes into files, kept word for word.
ALLOWED = {
    # the report page (a file): its text is the page's, whatever wrote the tags
    ("jobs/report/page.py", "no (no --segments)"),
    ("jobs/report/page.py", "(the tag run's --failures file lists them all)"),
    ("jobs/report/__init__.py", "(the tag run's --failures file does)"),
    ("jobs/report/__init__.py", "no --segments, and no --embeddings were given"),
    # the trained head's report.json keeps its warnings
    ("jobs/train.py", "; --folds {} validates on every file"),
    # `{fetch_hint}` is a `matpac models download NAME` command line
    ("checkpoints/downloads.py", "`{} --force`"),
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that stand alone as statements (docstrings and the like)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def _texts(tree: ast.AST):
    """(line, text) of every string literal; an f-string reads with `{}` for each value."""
    skip = _docstrings(tree)
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                inner.add(id(value))
                parts.append(value.value if isinstance(value, ast.Constant) else "{}")
            yield node.lineno, "".join(parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip | inner:
            yield node.lineno, node.value


def flag_literals() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/"):
            continue
        for line, text in _texts(ast.parse(path.read_text(), str(path))):
            text = COMMAND.sub("", text)
            for where, allowed in ALLOWED:
                if where == rel:
                    text = text.replace(allowed, "")
            if FLAG.search(text):
                found.append(f"{rel}:{line}: {text!r}")
    return found


def test_no_flag_is_named_in_a_message_below_the_cli():
    found = flag_literals()
    assert not found, "name the setting (top_k=3, `force`) and list it in settings=:\n" + "\n".join(found)


def test_the_scan_sees_a_flag_in_a_plain_string_and_in_an_f_string():
    tree = ast.parse('"""--doc is fine"""\nx = f"--top-k {k}: bad"\ny = "use --force"\n# --comment\n')
    texts = [t for _, t in _texts(tree) if FLAG.search(COMMAND.sub("", t))]
    assert texts == ["--top-k {}: bad", "use --force"]


def _settings_named() -> set[str]:
    """Every setting listed in a `settings=` keyword below cli/ (and in cli/, which raises library errors too)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "settings" and isinstance(node.value, ast.Tuple):
                names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return names


def test_every_setting_an_error_names_has_its_flag_and_every_flag_is_the_cli_s():
    named = _settings_named()
    assert len(named) > 20 and named - FLAGS.keys() == set()
    from typer.main import get_command

    from matpac_cli.cli import app

    group = get_command(app)
    options = set()
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", {name: cmd})
        for sub in subs.values():
            options |= {opt for param in sub.params for opt in getattr(param, "opts", [])}
    assert set(FLAGS.values()) - options == set()


def test_the_python_api_names_the_setting_and_the_cli_its_flag():
    from matpac_cli.jobs.tag_rows import check_selection

    with pytest.raises(UsageError) as info:
        check_selection(-1, None)
    assert str(info.value) == "top_k=-1: give 0 (every label) or a positive count"
    assert info.value.settings == ("top_k",)
    assert flagged(info.value) == "--top-k -1: give 0 (every label) or a positive count"


def test_embed_config_errors_name_its_fields():
    from matpac_cli.jobs.embed import EmbedConfig, check_config

    with pytest.raises(UsageError) as info:
        check_config(EmbedConfig(out=Path("emb.npy"), layer="twelve"))
    assert str(info.value) == "layer=twelve: expected a layer number, last or all"
    assert flagged(info.value) == "--layer twelve: expected a layer number, last or all"
    with pytest.raises(UsageError) as info:
        check_config(EmbedConfig(out=Path("emb.h5")))
    assert str(info.value).startswith("out=emb.h5: the embeddings are written as .npy")
    assert "--" not in str(info.value)


@pytest.mark.parametrize(
    "out, fmt, said",
    [
        ("-", "parquet", "--format parquet is binary and is not written to stdout; give --out FILE.parquet"),
        ("t.csv", "jsonl", "--format jsonl contradicts --out t.csv, which is csv"),
        ("t.txt", None, "--out t.txt: extension .txt is not supported; give a file ending in "),
    ],
)
def test_the_terminal_reads_what_it_read_before(out, fmt, said):
    from matpac_cli.outputs.writers import output_format

    with pytest.raises(UsageError) as info:
        output_format(out, fmt)
    assert "--" not in str(info.value)
    assert flagged(info.value).startswith(said)


def test_only_the_listed_settings_and_only_their_two_forms_become_flags():
    text = "out=x.csv: see top_k=3/out=1.wav and `force`; layout=2, forced, `out`"
    assert (
        with_flags(text, ("out", "force")) == "--out x.csv: see top_k=3/out=1.wav and --force; layout=2, forced, --out"
    )
    assert with_flags("about=1 `model`", ()) == "about=1 `model`"  # nothing listed: nothing touched
    assert with_flags("`unknown` x", ("unknown",)) == "`unknown` x"  # not in the table: left as spelt


def test_the_settings_travel_with_a_pickled_error():
    """A Ray worker's error reaches the driver pickled; its flags must survive the trip."""
    exc = pickle.loads(pickle.dumps(OutputError("use `force` to replace it", settings=("force",))))
    assert type(exc) is OutputError and exc.settings == ("force",) and flagged(exc) == "use --force to replace it"
    assert MatpacError("plain").settings == ()


def test_the_cli_prints_the_flag(tmp_path):
    proc = run_matpac(["tag", "nothing.wav", "--top-k", "-3"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode() == "matpac: error: --top-k -3: give 0 (every label) or a positive count\n"
