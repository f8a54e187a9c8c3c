"""The house's rules, read from the code's own imports: no circles, build time apart, every arrow runs down a floor.

Every import counts, at module level or inside a function (a function-local import cannot hide a circle here). The
floors are the table in docs/ARCHITECTURE.md ("The house"), so the picture a newcomer reads is the one tested.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from serve.paths import PROJECT_ROOT

PACKAGES = ("serve", "build_engines", "loadtests")
ENTRY_POINTS = ("serve.cli", "serve.stack")
"""Serving code may not import build_engines; these entry points (they build, then serve) may."""
TOOLING = "loadtests"
"""Load, soak, chaos and the benchmarks: they drive a stack from outside; only the CLI entry point reaches them."""


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (``from a import b`` counts a.b if it is one)."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    resolved = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def import_graph() -> dict[str, set[str]]:
    """Every project module and the project modules it imports."""
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module), Tarjan's algorithm."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = iter(range(len(graph) * 2))

    def visit(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def floors() -> dict[str, int]:
    """Each room's floor, from the table under "## The house" in docs/ARCHITECTURE.md (``| floor | rooms | ...``)."""
    text = (PROJECT_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## The house", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for room in re.findall(r"`([\w./]+)`", cells[1]):
                table[room.removesuffix(".py").removesuffix("/").replace("/", ".")] = int(cells[0])
    return table


def floor_of(module: str, table: dict[str, int]) -> int | None:
    """The floor of the most specific room containing ``module``."""
    while module:
        if module in table:
            return table[module]
        module = module.rpartition(".")[0]
    return None


def test_there_are_no_import_circles():
    assert circles(import_graph()) == []


def test_serving_code_imports_nothing_from_build_engines():
    graph = import_graph()
    serving = [m for m in graph if m.startswith("serve") and not m.startswith(ENTRY_POINTS)]
    wrong = {m: sorted(t for t in graph[m] if t.startswith("build_engines")) for m in serving}
    assert {m: targets for m, targets in wrong.items() if targets} == {}


def tooling_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Runtime modules (serve/ but the CLI entry point) and the tooling modules each imports."""
    runtime = [m for m in graph if m.split(".")[0] == "serve" and not m.startswith(ENTRY_POINTS[0])]
    wrong = {m: sorted(t for t in graph[m] if t.split(".")[0] == TOOLING) for m in runtime}
    return {m: targets for m, targets in wrong.items() if targets}


def test_runtime_code_imports_no_tooling():
    assert tooling_imports(import_graph()) == {}
    assert tooling_imports({"serve.http.app": {"loadtests.soak"}, "serve.cli.tools": {"loadtests.soak"}}) == {
        "serve.http.app": ["loadtests.soak"]
    }


MAX_LINES = 400
"""No file in serve/ longer: a file that grows past it is split by a seam (a coherent part into a module of its own)."""
GENERATED = ("serve/grpc_api/easel_pb2.py", "serve/grpc_api/easel_pb2_grpc.py")
"""grpc_tools writes these from easel.proto: nobody edits them."""


def long_files(folder: Path, limit: int) -> dict[str, int]:
    """The .py files under ``folder`` (relative to the checkout) longer than ``limit`` lines, and their lengths."""
    lengths = {str(p.relative_to(PROJECT_ROOT)): len(p.read_text().splitlines()) for p in folder.rglob("*.py")}
    return {path: n for path, n in sorted(lengths.items()) if n > limit}


def test_no_serve_file_is_over_400_lines():
    long = {p: n for p, n in long_files(PROJECT_ROOT / "serve", MAX_LINES).items() if p not in GENERATED}
    assert long == {}
    assert "serve/gateway.py" in long_files(PROJECT_ROOT / "serve", 10)  # the count sees a file past its limit


LOOP = ("torch", "diffusers", "transformers", "onnxruntime")
TRACING = ("cairosvg", "scipy")
REPLICA_MODULES = {
    "serve.gateway": (*LOOP, *TRACING),
    "serve.models.residency": (*LOOP, *TRACING),
    "serve.models.text_to_image": LOOP,
    "serve.vectorize.deployment": (*LOOP, *TRACING),
    "serve.grpc_api.easel_pb2_grpc": ("torch", "fastapi", "serve.serving"),
}
"""What each replica's module must not load at import: the denoising loop's libraries load in TextToImage replicas
only, in their constructor (a Gateway replica that imported diffusers started 2 s of CPU slower and held 125 MB more;
torch is 3.4 s more, in each Gateway replica and the residency; Serve's build of the app imports every deployment's
module); rendering and SSIM's libraries in the tracing workers only. Ray's gRPC proxy imports ``easel_pb2_grpc`` and
nothing else of Easel's (loading what answers a call made the proxy's start 4 s longer on every stack)."""


def test_replicas_load_only_the_libraries_they_run():
    for module, unwanted in REPLICA_MODULES.items():
        code = f"import sys, {module}; print(' '.join(m for m in {unwanted!r} if m in sys.modules))"
        loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert loaded.split() == [], f"{module} loads {loaded.strip()}"


PROTOCOL = "serve.protocol"
DRAWS = ("ray", "fastapi", "starlette", "tritonclient", "torch", "diffusers", "transformers", "onnxruntime")
DRAWS += ("serve.text_to_image", "serve.triton", "serve.serving", "serve.http", "serve.grpc_api", "serve.gateway")
"""What reading a request (every module of :data:`PROTOCOL`) must not load: a serving library or a deployable."""


def loaded_by(modules: list[str]) -> set[str]:
    """Every module a fresh interpreter holds once it has imported ``modules``."""
    code = f"import sys; import {', '.join(modules)}; print(' '.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_reading_a_request_loads_nothing_that_draws():
    modules = sorted(m for m in import_graph() if m.startswith(PROTOCOL))
    assert f"{PROTOCOL}.schema" in modules and f"{PROTOCOL}.video" in modules
    assert sorted(m for m in loaded_by(modules) if m.startswith(DRAWS)) == []
    assert "serve.text_to_image" in loaded_by(["serve.models.served"])  # the check sees what a deployable loads


def test_every_room_has_a_floor_and_every_arrow_runs_down():
    graph, table = import_graph(), floors()
    assert table, "docs/ARCHITECTURE.md has no floor table under '## The house'"
    homeless = sorted(m for m in graph if floor_of(m, table) is None and m not in PACKAGES)  # empty faces
    assert homeless == [], f"rooms without a floor in docs/ARCHITECTURE.md: {homeless}"
    upward = defaultdict(list)
    for module, targets in graph.items():
        for target in targets:
            if floor_of(target, table) > floor_of(module, table):
                upward[module].append(target)
    assert dict(upward) == {}


DOMAIN = ("text_to_image", "vectorize", "adapters", "finishing", "jobs", "experiments", "cache", "latent_cache")
DOMAIN += ("serving", "protocol")
"""The pipelines, their stores, the serving classes and the API's request models: what the key check (serve/access/)
never reads or imports (admission parses domain bodies, :mod:`serve.serving.admission`; the key check knows keys,
scopes and limits)."""


def domain_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """The modules of serve/access/ and the domain modules each imports."""
    domain = tuple(f"serve.{room}" for room in DOMAIN)
    access = [m for m in graph if m == "serve.access" or m.startswith("serve.access.")]
    wrong = {m: sorted(t for t in graph[m] if t.startswith(domain)) for m in access}
    return {m: targets for m, targets in wrong.items() if targets}


def test_the_key_check_imports_no_domain_package():
    assert domain_imports(import_graph()) == {}
    assert domain_imports({"serve.access": {"serve.protocol.schema", "serve.errors"}}) == {
        "serve.access": ["serve.protocol.schema"]
    }


def click_importers() -> list[str]:
    """Runtime modules (serve/ but the CLI package) that import click, anywhere in the file."""
    found = []
    for name, path in _modules().items():
        if name.split(".")[0] != "serve" or name.startswith(ENTRY_POINTS[0]):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "click" or n.startswith("click.") for n in names):
                found.append(name)
                break
    return sorted(found)


def test_no_runtime_module_imports_click():
    """Only serve/cli/ spells a command line: the settings, the serving code and the stack know nothing of one."""
    assert click_importers() == []


def test_the_checks_see_a_circle_and_an_upward_arrow():
    """The rules above can fail: a made-up circle and a made-up upward arrow are found."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    table = {"serve.errors": 1, "serve.http.app": 7}
    assert floor_of("serve.errors", table) < floor_of("serve.http.app", table)


def room_of(module: str, table: dict[str, int]) -> str | None:
    """The most specific room of the floor table that contains ``module``."""
    while module and module not in table:
        module = module.rpartition(".")[0]
    return module or None


def room_arrows() -> set[tuple[str, str]]:
    """The arrows between rooms the code's imports draw, floor-1 rooms left out, an arrow left out when another
    path already leads there (the transitive reduction: one diagram per code, and a readable one)."""
    graph, table = import_graph(), floors()
    arrows: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            source, sink = room_of(module, table), room_of(target, table)
            if source and sink and source != sink and table[sink] > 1:
                arrows[source].add(sink)

    def reachable(start: str, skip: tuple[str, str]) -> set[str]:
        """Rooms reachable from ``start`` without the arrow ``skip``."""
        seen, todo = set(), [start]
        while todo:
            here = todo.pop()
            for nxt in arrows[here] - seen:
                if (here, nxt) != skip:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return {(a, b) for a in list(arrows) for b in arrows[a] if b not in reachable(a, (a, b))}


def drawn_arrows() -> set[tuple[str, str]]:
    """The arrows of the mermaid diagram under "## The house" (node ids mapped to their room labels)."""
    text = (PROJECT_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    diagram = text.split("## The house", 1)[1].split("```mermaid", 1)[1].split("```", 1)[0]
    labels = dict(re.findall(r'(\w+)\["`?([\w./]+)`?"\]', diagram))
    edges = re.findall(r"(\w+)(?:\[[^\]]*\])?\s*-->\s*(\w+)", diagram)

    def room(node: str) -> str:
        return labels[node].removesuffix(".py").removesuffix("/").replace("/", ".")

    return {(room(a), room(b)) for a, b in edges}


def test_the_diagram_draws_every_arrow_of_the_code_and_no_other():
    drawn, real = drawn_arrows(), room_arrows()
    assert sorted(real - drawn) == [] and sorted(drawn - real) == [], (
        f"docs/ARCHITECTURE.md's diagram lacks {sorted(real - drawn)} and draws {sorted(drawn - real)}, "
        "which the code does not import"
    )


def mermaid() -> str:
    """The diagram the code draws, as ARCHITECTURE.md holds it: ``python tests/unit/test_architecture.py`` prints it."""
    table = floors()
    arrows = sorted(room_arrows(), key=lambda a: (-table[a[0]], a[0], -table[a[1]], a[1]))
    rooms = sorted({room for arrow in arrows for room in arrow}, key=lambda r: (-table[r], r))

    def label(room: str) -> str:
        path = room.replace(".", "/")
        return f"{path}.py" if (PROJECT_ROOT / f"{path}.py").exists() else f"{path}/"

    lines = ["flowchart TD", *(f'  {r.replace(".", "_")}["{label(r)}"]' for r in rooms)]
    lines += [f"  {a.replace('.', '_')} --> {b.replace('.', '_')}" for a, b in arrows]
    return "\n".join(lines)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(__name__).info("%s", mermaid())
