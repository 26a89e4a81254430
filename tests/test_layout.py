"""The layout a reader relies on: imports run one way, from the CLI and bench down to
whisper_min, with no cycles; no source file over 350 lines and no function over 80.

Every `import` and `from ... import` in the project's own code counts, including those inside
functions (a lazy import is still a dependency a reader has to follow). Bench scripts put
bench/ on sys.path, so there a bare name resolves to bench/NAME.py when that file exists.

    python tests/test_layout.py      # prints the import graph, one module a line
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ["das.py", "lora.py", "adml.py", "whisper_min", "decoders", "training", "evaluation", "datagen", "bench"]

# Lower layers never import higher ones (a module's layer is its longest matching prefix).
LAYERS = {
    "whisper_min": 0, "datagen": 0,  # Whisper itself; the data generator needs no model
    "lora": 1, "evaluation": 1,  # LoRA layers and adapter files; WER
    "adml": 2, "training": 2,  # the batched streams, B(AX); training an adapter
    "decoders.rules": 3, "decoders.route": 3,  # the selection rules and routing, on the streams
    "decoders.reference": 4, "decoders.cuda_graphs": 4,  # the naive references; CUDA graphs as a wrapper
    "decoders": 5,  # make_decoder: picks one of the above
    "das": 6, "bench": 7,  # the CLI, then the benchmarks and the study on top
}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 350, 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    files = []
    for entry in CODE:
        path = ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules that `path` imports (the longest known prefix of each name)."""
    found = set()
    in_bench = module_name(path).startswith("bench.")
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: from .x import y, inside a package
            package = module_name(path).rsplit(".", node.level)[0]
            base = f"{package}.{node.module}" if node.module else package
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if in_bench and f"bench.{name.split('.')[0]}" in modules:
                name = f"bench.{name}"
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module_name(path))
    return found


def graph() -> dict[str, set[str]]:
    files = source_files()
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_find_cycle_finds_one():  # the check above is not vacuous
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_run_down_the_layers():
    edges = graph()
    assert {"das", "adml", "decoders.rules", "decoders.route", "training.train"} <= set(edges)  # the walk saw them
    upward = [f"{m} (layer {layer(m)}) imports {n} (layer {layer(n)})"
              for m, targets in edges.items() for n in targets if layer(n) > layer(m)]
    assert not upward, "\n".join(upward)


def test_file_and_function_sizes():
    too_long = []
    for path in source_files() + sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


if __name__ == "__main__":
    for module, targets in sorted(graph().items()):
        print(f"{module} -> {', '.join(sorted(targets)) or '-'}")
