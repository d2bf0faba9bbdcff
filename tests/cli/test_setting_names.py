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
    """Every setting listed in a `settings=` keyword below cli/ (and in cli/, which raises library
    errors too). A setting passed as a variable is followed where it can be: a parameter of the
    function that raises (`settings=(setting,)`, `settings=settings`) counts with its default and
    with every constant that a call in the package passes for it (`check_out(out, force, "report")`,
    `_count(self.workers, "workers")`). The gap: a value built at run time or passed on from another
    error (`settings=exc.settings`) is not seen; the errors it comes from are."""
    trees = [ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")]
    names: set[str] = set()
    params: set[tuple[str, str]] = set()  # (function, parameter) that carry settings
    for tree in trees:
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.keyword) and node.arg == "settings":
                    elts = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                    names |= {e.value for e in elts if isinstance(e, ast.Constant)}
                    params |= {(function.name, e.id) for e in elts if isinstance(e, ast.Name)}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(node.name == f for f, _ in params):
                for name, default in _defaults(node):
                    names |= _constants(default) if (node.name, name) in params else set()
            if isinstance(node, ast.Call):
                names |= _passed(node, params, trees)
    return names


def _defaults(function: ast.FunctionDef):
    """(parameter, default expression) of a function's parameters that have defaults."""
    positional = function.args.posonlyargs + function.args.args
    yield from zip([a.arg for a in positional[len(positional) - len(function.args.defaults) :]], function.args.defaults)
    yield from ((a.arg, d) for a, d in zip(function.args.kwonlyargs, function.args.kw_defaults) if d is not None)


def _constants(node: ast.AST) -> set[str]:
    """The strings of a constant or of a tuple of constants; nothing for anything else."""
    elts = node.elts if isinstance(node, ast.Tuple) else [node]
    return {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def _passed(call: ast.Call, params: set[tuple[str, str]], trees: list[ast.AST]) -> set[str]:
    """The constants `call` passes for a settings-carrying parameter of the function it calls."""
    callee = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
    wanted = {p for f, p in params if f == callee}
    if not wanted:
        return set()
    found = {c for k in call.keywords if k.arg in wanted for c in _constants(k.value)}
    for tree in trees:
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef) and function.name == callee:
                order = [a.arg for a in function.args.posonlyargs + function.args.args]
                order = order[1:] if order[:1] == ["self"] else order
                found |= {c for name, arg in zip(order, call.args) if name in wanted for c in _constants(arg)}
    return found


def test_settings_passed_as_variables_are_seen():
    """`report` reaches `check_out` only as an argument, `workers` and `threads` reach `_count`
    only so: the scan must see them, or the table check below would miss their flags."""
    assert {"report", "workers", "threads", "model", "heads"} <= _settings_named()


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


def _error_classes(trees: list[ast.AST]) -> set[str]:
    """`MatpacError` and every class of the package that derives from it, by name."""
    classes = {"MatpacError"}
    grown = True
    while grown:
        before = len(classes)
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", None)) in classes for b in node.bases
                ):
                    classes.add(node.name)
        grown = len(classes) > before
    return classes


def _setting_forms(text: str) -> set[str]:
    """The settings of `FLAGS` that `text` names in a form `with_flags` turns into a flag:
    `name=VALUE` at the start or after a space or `(`, or `` `name` ``."""
    text = COMMAND.sub("", text)
    return {name for name in FLAGS if re.search(rf"(?<![^\s(]){re.escape(name)}=", text) or f"`{name}`" in text}


def unlisted_settings(tree: ast.AST, classes: set[str]) -> list[tuple[int, str]]:
    """(line, settings) of every error built with a literal message that names a setting, when the
    call has no `settings=` or its tuple of constants leaves one out: the CLI would
    print the Python name where it should print the flag. The gap: a message held in a variable
    (or built by a helper, `no_network`) is not read here; its `settings=` travels with it."""
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
        if name not in classes or not call.args:
            continue
        named = {n for _, text in _texts(ast.Expression(call.args[0])) for n in _setting_forms(text)}
        listed = [k.value for k in call.keywords if k.arg == "settings"]
        if not named or (listed and not isinstance(listed[0], ast.Tuple)):
            continue  # a variable or an expression: `_settings_named` follows those
        given = _constants(listed[0]) if listed else set()
        if not listed or named - given and not any(isinstance(e, ast.Name) for e in listed[0].elts):
            found.append((call.lineno, ", ".join(sorted(named - given))))
    return found


def _names_some(call: ast.Call) -> bool:
    return bool(call.args) and any(_setting_forms(text) for _, text in _texts(ast.Expression(call.args[0])))


def test_every_message_naming_a_setting_lists_it():
    """Below cli/, an error whose message says `top_k=3` or `` `force` `` passes `settings=` with
    those names, so the terminal reads `--top-k 3` and `--force`."""
    paths = sorted(p for p in PACKAGE.rglob("*.py") if not p.relative_to(PACKAGE).as_posix().startswith("cli/"))
    trees = {p: ast.parse(p.read_text(), str(p)) for p in paths}
    classes = _error_classes(list(trees.values()))
    assert {"UsageError", "OutputError", "InputError", "ModelError", "WeightsError", "ChecksumError"} <= classes
    named = [c for tree in trees.values() for c in ast.walk(tree) if isinstance(c, ast.Call) and _names_some(c)]
    assert len(named) > 30  # the scan reads the messages it guards
    found = [
        f"{p.relative_to(PACKAGE).as_posix()}:{line}: {names}"
        for p, tree in trees.items()
        for line, names in unlisted_settings(tree, classes)
    ]
    assert not found, "list the settings a message names in settings=:\n" + "\n".join(found)


def test_the_message_scan_sees_a_setting_without_its_settings():
    code = (
        'raise UsageError(f"top_k={k}: bad")\n'  # no settings=
        'raise OutputError("use `force` to replace it", settings=("out",))\n'  # the wrong one
        'raise InputError(f"x.wav (layer=2) is short")\n'  # after a "("
        'raise UsageError(f"top_k={k}: bad", settings=("top_k",))\n'  # fine
        'raise UsageError(f"{setting}={v}: bad", settings=(setting,))\n'  # a variable: followed elsewhere
        'raise UsageError("run `matpac embed --force`")\n'  # a command line
        'raise UsageError("file=top_k=3.wav is odd")\n'  # not at a word's start
        'raise ValueError("top_k=3")\n'  # not a matpac error
    )
    found = unlisted_settings(ast.parse(code), {"MatpacError", "UsageError", "OutputError", "InputError"})
    assert found == [(1, "top_k"), (2, "force"), (3, "layer")]
