"""The package's layers, read from its import statements (function-level imports included):
inference does not depend on the training loop, the core not on the engine, the engine not on
the suite; and no module imports itself in a circle when it is loaded."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "agpnet"


def import_graph(module_level: bool = False) -> dict[str, set[str]]:
    """module name -> the agpnet modules it imports (a package import counts as its __init__);
    module_level: only the imports run when the module is loaded (not those inside functions)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body if module_level else ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_inference_does_not_import_the_training_loop():
    graph = import_graph()
    for module in ("agpnet.evaluate", "agpnet.predict", "agpnet.submission", "agpnet.viewer", "agpnet.model.checkpoint"):
        assert "agpnet.train" not in reachable(graph, module), module


CORE = ("agpnet.data", "agpnet.model", "agpnet.metrics", "agpnet.config")
ENGINE = ("agpnet.runtime", "agpnet.train", "agpnet.evaluate", "agpnet.run", "agpnet.predict", "agpnet.submission",
          "agpnet.progress", "agpnet.records")
SUITE = ("agpnet.sweep", "agpnet.sweep_ray", "agpnet.tables", "agpnet.published", "agpnet.plots", "agpnet.report", "agpnet.viewer",
         "agpnet.runfinder")


def test_core_does_not_import_the_engine_or_the_suite():
    graph = import_graph()
    for core in CORE:
        assert not reachable(graph, core) & {*ENGINE, *SUITE, "agpnet.cli"}, core


def test_engine_does_not_import_the_suite():
    graph = import_graph()
    for engine in ENGINE:
        assert not reachable(graph, engine) & {*SUITE, "agpnet.cli"}, engine


def test_no_import_cycles():
    """At load time (an optional part, such as the Ray executor, may import its caller lazily)."""
    graph = import_graph(module_level=True)
    assert [module for module in graph if module in reachable(graph, module)] == []
