"""The packages' one-way flow, read from the source with `ast` (nothing is imported).

Data moves cli -> jobs -> engines / outputs -> pipeline -> inference -> checkpoints -> encoder ->
base (config, errors, sidefiles, events, and the package's `__version__`). A module may import
its own package and the packages after it, never one before it; imports inside functions count
(a lazy import is still a dependency, it only loads later). Only `cli/` speaks to the terminal
(typer, rich, click); only `engines/ray/` imports ray, an optional extra. No two modules import
each other, directly or round a longer loop.

`matpac_cli/__init__.py` is the public API: a facade that loads any package below `cli/` on
first attribute access. It and `__main__.py` (`python -m matpac_cli`, which runs `cli`) are the
entry points and sit outside the order, above it; the modules inside may take only
`__version__` from the facade.

A known violation that another change removes is listed in ALLOWED with its reason, so this
test passes meanwhile; delete the entry when the fix lands, and the test then holds the line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "matpac_cli"

# Floors, top to bottom. engines, outputs and library share a floor: none imports another (the
# engines hand results to callbacks; the jobs write them to outputs and the library), so none is
# above another.
FLOORS: list[set[str]] = [
    {"cli"},
    {"jobs"},
    {"engines", "outputs", "library"},
    {"pipeline"},
    {"inference"},
    {"checkpoints"},
    {"encoder"},
    {"base"},  # config, errors, sidefiles, events and any other top-level module; __version__
]
FLOOR = {pkg: i for i, floor in enumerate(FLOORS) for pkg in floor}
FACADE = "matpac_cli"  # the top-level __init__: the public API
MAIN = "matpac_cli.__main__"  # `python -m matpac_cli`: the program, over cli

TERMINAL = {"typer", "rich", "click"}  # only cli/
RAY = {"ray"}  # only engines/ray/
LANCE = {"lance"}  # only library/

# (importing module, imported module): why it is allowed for now. Delete an entry when its fix lands.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    """The floor's name: the first package under matpac_cli, or `base` for a top-level module."""
    parts = module.split(".")
    if len(parts) == 1 or module == MAIN:
        return FACADE
    return parts[1] if (PACKAGE / parts[1]).is_dir() else "base"


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str, int]]:
    """Every import in `path`, at any depth (functions, branches, try blocks), as
    (resolved module, first name imported, line): `from a import b` names module a.b when b is a
    module, else a; relative imports are resolved against `module`."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, alias.name, node.lineno))
    return found


def internal_edges() -> list[tuple[str, str, str, int]]:
    """(importer, imported module, name, line) for every import of a matpac_cli module."""
    known = modules()
    edges = []
    for module, path in known.items():
        for target, name, line in imports_of(module, path, known):
            if target == FACADE or target.startswith(FACADE + "."):
                edges.append((module, target, name, line))
    return edges


def _where(module: str, line: int) -> str:
    return f"{modules()[module].relative_to(PACKAGE.parent)}:{line}"


def test_every_package_has_a_floor():
    """A new package must be placed in the flow (add it to FLOORS) before anything can check it."""
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(FLOOR), f"packages with no floor in FLOORS: {sorted(packages - set(FLOOR))}"


def test_imports_flow_one_way():
    """(1) and (4): each package imports only itself and packages after it; the encoder only the base."""
    wrong = []
    for src, dst, name, line in internal_edges():
        a, b = package_of(src), package_of(dst)
        if a == FACADE:
            if src == FACADE and b == "cli":
                wrong.append(f"{_where(src, line)}: the public API loads the terminal layer ({dst})")
            continue
        if b == FACADE:
            if name != "__version__":
                wrong.append(f"{_where(src, line)}: takes {name} from the facade; import it from its module")
            continue
        if a == b or FLOOR[b] > FLOOR[a] or (src, dst) in ALLOWED:
            continue
        why = "upward" if FLOOR[b] < FLOOR[a] else "sideways (same floor)"
        wrong.append(f"{_where(src, line)}: {a} imports {dst} ({why})")
    assert not wrong, "\n".join(wrong)


def test_every_allowed_violation_still_exists():
    """An ALLOWED entry whose import is gone is deleted, so the exception cannot shelter a new one."""
    edges = {(src, dst) for src, dst, _, _ in internal_edges()}
    stale = [f"{src} -> {dst}" for src, dst in ALLOWED if (src, dst) not in edges]
    assert not stale, "fixed: delete from ALLOWED in tests/test_layering.py: " + ", ".join(stale)


def test_encoder_imports_only_the_base():
    """(4) spelled out: the model is usable alone, with config and errors, nothing else of matpac."""
    wrong = [
        f"{_where(src, line)}: {dst}"
        for src, dst, _, line in internal_edges()
        if package_of(src) == "encoder" and package_of(dst) not in ("encoder", "base") and (src, dst) not in ALLOWED
    ]
    assert not wrong, "\n".join(wrong)


def _third_party(top_names: set[str]) -> list[tuple[str, str, int]]:
    known = modules()
    return [
        (module, target, line)
        for module, path in known.items()
        for target, _, line in imports_of(module, path, known)
        if target.split(".")[0] in top_names
    ]


def test_only_cli_speaks_to_the_terminal():
    """(2) typer, rich and click belong to the command line; the library is usable without them."""
    wrong = [f"{_where(m, line)}: {t}" for m, t, line in _third_party(TERMINAL) if package_of(m) != "cli"]
    assert not wrong, "\n".join(wrong)


def test_only_engines_ray_imports_ray():
    """(3) Ray is an optional extra: one package knows it."""
    wrong = [
        f"{_where(m, line)}: {t}"
        for m, t, line in _third_party(RAY)
        if not (m == "matpac_cli.engines.ray" or m.startswith("matpac_cli.engines.ray."))
    ]
    assert not wrong, "\n".join(wrong)


def test_only_library_imports_lance():
    """(3b) Lance is the library's engine: the rest of matpac sees the library's own API."""
    wrong = [f"{_where(m, line)}: {t}" for m, t, line in _third_party(LANCE) if package_of(m) != "library"]
    assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop in `graph` (a path that comes back to its start), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return None


def test_no_import_cycles():
    """(5) between modules, lazy imports included. The facade's lazy loads are left out: it is the
    entry point, and the modules take only `__version__` from it (checked above)."""
    graph: dict[str, set[str]] = {}
    for src, dst, _, _ in internal_edges():
        if src != dst and FACADE not in (src, dst):
            graph.setdefault(src, set()).add(dst)
    loop = find_cycle(graph)
    assert loop is None, "import cycle: " + " -> ".join(loop)


def test_the_checks_see_violations(tmp_path):
    """The checker itself: lazy and relative imports are resolved, and a loop is found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert package_of("matpac_cli.encoder.vit") == "encoder"
    assert package_of("matpac_cli.errors") == "base"
    known = modules()
    edges = {(src, dst) for src, dst, _, _ in internal_edges()}
    assert ("matpac_cli.cli", "matpac_cli.errors") in edges  # `from matpac_cli.errors import ...`
    assert ("matpac_cli.jobs.stored", "matpac_cli.engines") in edges  # `from matpac_cli import engines`
    assert any(dst.startswith("matpac_cli.engines.ray") for src, dst in edges if src == "matpac_cli.engines")  # lazy
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from ..pipeline import chunking\n    from . import vit\n    import ray.data\n")
    assert imports_of("matpac_cli.encoder.planted", planted, known) == [
        ("matpac_cli.pipeline.chunking", "chunking", 2),
        ("matpac_cli.encoder.vit", "vit", 3),
        ("ray.data", "ray.data", 4),
    ]
