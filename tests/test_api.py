"""The public Python API: `from matpac_cli import ...` gives the library's own objects, loads
lazily (importing the package pulls in neither torch nor the terminal layer), and help() shows it."""

from __future__ import annotations

import importlib
import pydoc
import subprocess
import sys

import pytest
from conftest import REPO

import matpac_cli


def _fresh(code: str) -> str:
    """`code` in a new interpreter (this one has torch loaded already), its stdout."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_is_cheap():
    """`import matpac_cli` loads no torch, numpy, typer or rich, and no subpackage."""
    out = _fresh(
        "import sys, matpac_cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchaudio', 'numpy', 'typer', 'rich', 'click', 'ray', 'matpac_cli')))"
    )
    assert out.strip() == "['matpac_cli']"


def test_a_name_loads_its_module_on_first_use():
    out = _fresh(
        "import sys, matpac_cli\n"
        "matpac_cli.UsageError\n"
        "print('matpac_cli.errors' in sys.modules, 'torch' in sys.modules)\n"
        "from matpac_cli import discover\n"
        "print(discover.__module__)"
    )
    assert out.split() == ["True", "False", "matpac_cli.pipeline.discovery"]


@pytest.mark.parametrize("name", [n for n in matpac_cli.__all__ if n != "__version__"])
def test_every_public_name_is_the_object_from_its_home(name):
    """One object per name: the facade hands out the module's own function or class, not a copy."""
    home = importlib.import_module(matpac_cli._HOMES[name])
    assert getattr(matpac_cli, name) is getattr(home, name)
    assert name in dir(matpac_cli)


def test_the_api_lies_below_the_terminal_layer():
    """The facade loads its names with importlib (no import statement for the layering test to
    see), so the rule is checked here: nothing public comes from cli/, which loads typer and rich."""
    assert not [home for home in matpac_cli._HOMES.values() if home.split(".")[:2] == ["matpac_cli", "cli"]]


def test_unknown_names_and_subpackages():
    """An unknown name is an AttributeError (so hasattr works), and subpackages still import."""
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        matpac_cli.nope  # noqa: B018
    assert not hasattr(matpac_cli, "nope")
    from matpac_cli import engines  # a subpackage, not a public name: found by the import system

    assert engines.__name__ == "matpac_cli.engines"


def test_help_shows_the_api():
    """help(matpac_cli) shows the usage example, every public name in the docstring's list (so
    the list cannot fall behind __all__), and each function with its signature."""
    doc = matpac_cli.__doc__
    listed = doc[doc.index("The public names:") :]
    missing = [n for n in matpac_cli.__all__ if n not in listed.replace(",", " ").replace("(", " ").split()]
    assert not missing, f"public names not listed in matpac_cli's docstring: {missing}"
    assert "from matpac_cli import EmbedConfig, Listeners, Predictor, RunOptions, discover, embed" in doc
    text = pydoc.render_doc(matpac_cli, renderer=pydoc.plaintext)
    assert "Predictor.load(" in text
    for name in ("embed", "tag", "discover", "nearest", "train", "read_embeddings", "resolve"):
        assert f"\n    {name}(" in text, name  # pydoc's FUNCTIONS section, with the signature
    for name in ("Predictor", "EmbedConfig", "TagConfig", "TrainConfig", "MatpacError", "InputError"):
        assert f"class {name}(" in text, name


def test_the_version_is_the_packaged_one():
    """One version: pyproject's, which the CLI's --version and every manifest print."""
    text = (REPO / "pyproject.toml").read_text()
    assert f'\nversion = "{matpac_cli.__version__}"\n' in text
