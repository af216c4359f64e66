"""The layering of lxdproxy (docs/architecture.md), checked from the source: every import of every
module under lxdproxy/ (function-level ones too, read with ``ast``, nothing is executed) goes to
its own layer or a lower one; nothing the device manager reaches imports aiohttp; nothing in
lxdproxy/ imports the test suite or the lab; benchmarks/ and lab/ never import ``tests``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "lxdproxy"

# Lowest first; a module may import its own layer and lower ones. The longest matching prefix
# names a module's layer ("lxdproxy.instances.model" before "lxdproxy.instances").
LAYERS: dict[str, int] = {
    "lxdproxy": 0,  # the package itself (__version__); exact match only, not a prefix
    "lxdproxy.errors": 0,
    "lxdproxy.log_format": 0,
    "lxdproxy.periodic": 0,
    "lxdproxy.config": 0,
    "lxdproxy.proxy_protocol": 0,
    "lxdproxy.instances.model": 1,
    "lxdproxy.netns": 1,
    "lxdproxy.forward": 2,
    "lxdproxy.nat": 2,
    "lxdproxy.store": 2,
    "lxdproxy.warning_registry": 2,
    "lxdproxy.state_dir": 2,
    "lxdproxy.instances": 2,
    "lxdproxy.workers": 3,
    "lxdproxy.manager": 4,
    "lxdproxy.api": 5,
    "lxdproxy.daemon": 6,
    "lxdproxy.cli": 7,
}

# Known violations the architecture issue (9) is removing, exactly as the test prints them.
# Empty this list as they go: an entry that no longer occurs fails the test too.
KNOWN_VIOLATIONS: set[str] = set()
KNOWN_AIOHTTP_CHAINS: set[str] = set()


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(top: str) -> dict[str, Path]:
    """Every module of the package (or directory) ``top`` at the repository root, by name."""
    return {_module_name(p, REPO): p for p in sorted((REPO / top).rglob("*.py"))}


def _imports(name: str, path: Path, is_package: bool) -> Iterator[str]:
    """Absolute names of everything ``path`` imports, wherever the import statement is."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one.
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def _graph(top: str) -> dict[str, set[str]]:
    """Module -> the modules it imports (within the package: only names that are modules)."""
    modules = _modules(top)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set(_imports(name, path, path.name == "__init__.py"))
        graph[name] = {m for m in found if m in modules or not m.startswith(f"{top}.")}
    return graph


def _layer(module: str) -> int | None:
    if module == PACKAGE:
        return LAYERS[PACKAGE]
    best = max((p for p in LAYERS if p != PACKAGE and (module == p or module.startswith(p + "."))),
               key=len, default=None)
    return None if best is None else LAYERS[best]


def _top(module: str) -> str:
    return module.partition(".")[0]


def layering_violations() -> list[str]:
    graph = _graph(PACKAGE)
    out: list[str] = []
    for module, imported in sorted(graph.items()):
        own = _layer(module)
        if own is None:
            out.append(f"{module} has no layer: add it to LAYERS in tests/unit/test_layering.py")
            continue
        for target in sorted(imported):
            if _top(target) in ("tests", "lab"):
                out.append(f"{module} imports {target} (production code never imports {_top(target)})")
            elif _top(target) == PACKAGE:
                theirs = _layer(target)
                if theirs is not None and theirs > own:
                    out.append(f"{module} imports {target} (layer {theirs} above {own})")
    return out


def aiohttp_reached_from_manager() -> list[str]:
    """Import chains from a manager module to aiohttp, through lxdproxy modules. Importing
    a.b.c runs a/__init__ and a/b/__init__ too, so parent packages count as imported."""
    graph = _graph(PACKAGE)

    def imported_by(module: str) -> set[str]:
        names = set(graph.get(module, ()))
        for name in list(names):
            parts = name.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts)))
        return names

    out: list[str] = []
    for start in sorted(m for m in graph if m == "lxdproxy.manager" or m.startswith("lxdproxy.manager.")):
        chains = {start: [start]}
        todo = [start]
        while todo:
            module = todo.pop()
            for target in sorted(imported_by(module)):
                if _top(target) == "aiohttp":
                    out.append(" -> ".join([*chains[module], "aiohttp"]))
                elif target in graph and target not in chains:
                    chains[target] = [*chains[module], target]
                    todo.append(target)
    return sorted(set(out))


def test_layer_table_covers_every_existing_layer_prefix() -> None:
    modules = _modules(PACKAGE)
    missing = [p for p in LAYERS if p != "lxdproxy.workers" and not any(
        m == p or m.startswith(p + ".") for m in modules)]
    assert missing == [], f"LAYERS names packages that do not exist: {missing}"


def test_no_module_imports_from_a_layer_above_it() -> None:
    found = set(layering_violations())
    new = sorted(found - KNOWN_VIOLATIONS)
    gone = sorted(KNOWN_VIOLATIONS - found)
    assert not new, "upward imports:\n" + "\n".join(new)
    assert not gone, "fixed, remove from KNOWN_VIOLATIONS:\n" + "\n".join(gone)


def test_nothing_the_manager_imports_imports_aiohttp() -> None:
    found = set(aiohttp_reached_from_manager())
    new = sorted(found - KNOWN_AIOHTTP_CHAINS)
    gone = sorted(KNOWN_AIOHTTP_CHAINS - found)
    assert not new, "the manager reaches aiohttp:\n" + "\n".join(new)
    assert not gone, "fixed, remove from KNOWN_AIOHTTP_CHAINS:\n" + "\n".join(gone)


def test_benchmarks_and_lab_never_import_tests() -> None:
    found = [f"{module} imports {target}"
             for top in ("benchmarks", "lab")
             for module, imported in sorted(_graph(top).items())
             for target in sorted(imported) if _top(target) == "tests"]
    assert found == [], "\n".join(found)


def test_a_daemon_without_https_or_lxd_imports_neither_cryptography_nor_pylxd() -> None:
    """They cost the control plane ~14 MiB of RSS (the 1,000-device memory target): only a daemon
    given --https or --lxd may load them (lazily, in daemon.py)."""
    import subprocess
    import sys

    code = ("import sys, lxdproxy.daemon, lxdproxy.cli.main, lxdproxy.api.app;"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'cryptography', 'pylxd'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
