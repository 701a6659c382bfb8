"""The package layout, read from the import statements (nothing is imported): salt_model's parts form
layers, salt_model never imports Ray, and no orchestrator entry point imports another."""

from __future__ import annotations

import ast

from tests.processes import REPO

# Each salt_model part (a folder or a top-level module) may import only parts of a lower rank.
RANKS = {
    "io": 0,
    "run_folder": 0,
    "device": 0,
    "config": 1,
    "cli": 2,
    "data": 2,
    "model": 2,
    "evaluation": 3,
    "training": 4,
    "config_doc": 5,
    "train": 5,
}
ENTRY_POINTS = {"orchestrator.train", "orchestrator.tune", "orchestrator.predict", "orchestrator.report"}


def imports_by_module(package: str) -> dict[str, set[str]]:
    """{module: every module name it imports, function-level imports included}."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        out[module] = names
    return out


def part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if bits[0] == "salt_model" and len(bits) > 1 else None


def test_salt_model_parts_import_only_lower_layers():
    parts = {p.stem for p in (REPO / "salt_model").iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__pycache__"}
    assert parts == set(RANKS), f"new or removed salt_model parts: give each a rank in RANKS ({parts})"
    upward = []
    for module, names in imports_by_module("salt_model").items():
        for name in names:
            a, b = part(module), part(name)
            if a and b in RANKS and a != b and RANKS[b] >= RANKS[a]:
                upward.append(f"{module} imports {name} ({a} rank {RANKS[a]}, {b} rank {RANKS[b]})")
    assert not upward, "\n".join(upward)


def test_salt_model_never_imports_ray():
    found = [
        f"{module}: {name}"
        for module, names in imports_by_module("salt_model").items()
        for name in names
        if name == "ray" or name.startswith("ray.")
    ]
    assert not found, found


def test_no_entry_point_reaches_another():
    graph = imports_by_module("orchestrator")
    for entry in sorted(ENTRY_POINTS):
        seen, todo = set(), [entry]
        while todo:
            for name in graph.get(todo.pop(), ()):
                if name in graph and name not in seen:
                    seen.add(name)
                    todo.append(name)
        assert not seen & (ENTRY_POINTS - {entry}), f"{entry} imports {sorted(seen & ENTRY_POINTS)}"
