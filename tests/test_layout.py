"""The package layout: each subpackage imports only the layers before it, so the flow stays one way.

request -> data -> facts -> engine -> cards: a layer may import a layer of a lower rank, never one of
the same or a higher rank (except itself). Top-level modules are layers of their own.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cds_service"

# The allowed order, lowest first. A unit is a subpackage (`fhir`) or a top-level module (`advice`).
# `facts.schema` (the fact model) is a unit of its own below `authoring`: rule authoring, the
# engine's lint and the facts layer all read it, and it reads only `knowledge`.
RANKS = {
    "knowledge": 0,
    "hook_request": 0,
    "metrics": 0,
    "facts.schema": 1,
    "authoring": 2,
    "fhir": 3,
    "engine": 4,
    "facts": 4,
    "config": 4,
    "cards": 5,
    "services": 6,
    "advice": 7,
    "store": 8,
    "web": 9,
    "cli": 10,
    "app": 10,
}
MODULE_UNITS = {"cds_service.facts.schema": "facts.schema"}  # modules ranked apart from their subpackage


def _unit(module: str) -> str | None:
    """`cds_service.fhir.prefetch` -> `fhir`; `cds_service` itself -> None."""
    for prefix, unit in MODULE_UNITS.items():
        if module == prefix or module.startswith(prefix + "."):  # the module or a name imported from it
            return unit
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cds_service" else None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every cds_service module this file imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m == "cds_service" or m.startswith("cds_service.")}


def _edges() -> dict[str, set[tuple[str, str]]]:
    """unit -> {(importing file, imported unit)} for imports that leave the unit."""
    edges: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _unit(_module_name(path))
        if source is None:
            continue
        for target in {_unit(m) for m in _imports(path)} - {None, source}:
            edges.setdefault(source, set()).add((str(path.relative_to(PACKAGE.parent)), target))
    return edges


def test_every_unit_has_a_rank():
    units = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()
    }
    units |= {
        unit for module, unit in MODULE_UNITS.items() if (PACKAGE.parent / (module.replace(".", "/") + ".py")).is_file()
    }
    assert units == set(RANKS), f"place new modules or packages in RANKS: {sorted(units ^ set(RANKS))}"


def test_a_layer_imports_only_layers_below_it():
    upward = sorted(
        f"{file} imports {target} ({RANKS[target]}), not below {source} ({RANKS[source]})"
        for source, pairs in _edges().items()
        for file, target in pairs
        if RANKS[target] >= RANKS[source]
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_subpackages():
    graph = {source: {target for _, target in pairs} for source, pairs in _edges().items()}
    state: dict[str, str] = {}

    def visit(unit: str, trail: list[str]) -> None:
        state[unit] = "open"
        for nxt in sorted(graph.get(unit, ())):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(trail + [unit, nxt])
            if nxt not in state:
                visit(nxt, trail + [unit])
        state[unit] = "done"

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_the_checker_sees_real_imports():
    """The layer test is only as good as the import parser: it must see the pipeline's known edges."""
    edges = _edges()
    assert ("cds_service/advice.py", "facts") in edges["advice"]
    assert ("cds_service/web/api.py", "advice") in edges["web"]
    assert any(target == "knowledge" for _, target in edges["facts"])


def test_each_subpackage_says_what_it_holds():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, (
            f"{init.relative_to(PACKAGE.parent)} needs a docstring: what it holds, what it may import"
        )
    assert ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")))
