"""fluid's layers and what each may import, checked statically (ast only: nothing is imported,
no VM, no Prefect).

- infra/ is the engine: libvirt domains, images, sandboxes, spares and warm slots, SSH and the
  CA, the database, change capture and export, guardrails, agents, audit. It owns everything that
  touches the host or a guest, and knows nothing of orchestration: it imports the standard
  library, third-party libraries other than Prefect, and infra/ itself; never prefect, tasks,
  flows, blocks or cli (not even lazily inside a function). Inside it, the packages stand on
  one another (INFRA_FORBIDDEN): host, transport and guardrails stand alone; records, machines,
  state and ansible never import agents or guardrails; machines never import ansible.
- orchestration/ is the Prefect plumbing: the local server, worker and deployments, the client,
  the per-host sandbox slots. It may import prefect and infra/; never tasks, flows, blocks or
  cli.
- blocks/ holds the Prefect blocks, fluid's configuration stored on the Prefect server, and
  their loading (blocks/loading.py). It may import prefect and infra/; never orchestration,
  tasks, flows or cli.
- tasks/ holds the Prefect tasks the flows use, each a step over infra/, and their artifacts.
  It may import prefect, infra/, orchestration/ and blocks/; never flows or cli.
- flows/ holds the Prefect flows, which compose tasks. It may import prefect, infra/,
  orchestration/, blocks/ and tasks/; never cli.
- cli/, the `fluid` command, is the top: it may import any layer, but prefect, flows, tasks,
  blocks and the orchestration modules that use Prefect only lazily, inside the functions of
  the commands that need them (cli/run.py, cli/janitor.py, cli/production.py, cli/worker.py);
  every other cli module never imports them, so sandbox, image and pool commands start fast.

Across all of them, a module uses only another module's public interface: no `module._name`
on a name an import statement bound to fluid's own modules, and no `from module import _name`.
What a private name does is the business of the module that defines it; a caller that needs it
asks for it to be made public (with a docstring) or moved where it belongs. Attributes of
`self`, of instances and of pydantic models cannot be resolved statically and are not checked;
nor are third-party libraries' private names (infra/guardrails/bashlex_fix.py patches one of
bashlex's on purpose).

No modules import one another round a circle, lazily or not; and tests/ mirrors the product's
folders (tests/infra/machines/ specifies infra/machines/, and so on).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = frozenset({"infra", "orchestration", "tasks", "flows", "blocks", "cli"})
PRODUCT = ("infra", "orchestration", "tasks", "flows", "blocks", "cli")

# layer -> the top-level packages it must never import
FORBIDDEN = {
    "infra": frozenset({"prefect", "orchestration", "tasks", "flows", "blocks", "cli"}),
    "orchestration": frozenset({"tasks", "flows", "blocks", "cli"}),
    "blocks": frozenset({"orchestration", "tasks", "flows", "cli"}),
    "tasks": frozenset({"flows", "cli"}),
    "flows": frozenset({"cli"}),
}
# Inside infra/: package -> the infra packages it must never import. Lower packages (host,
# transport, guardrails) stand alone; nothing but agents uses guardrails or agents.
INFRA_FORBIDDEN = {
    "infra.host": frozenset(
        {"infra.transport", "infra.machines", "infra.state", "infra.ansible"}
        | {"infra.agents", "infra.guardrails"}
    ),
    "infra.transport": frozenset(
        {"infra.machines", "infra.records", "infra.state", "infra.ansible"}
        | {"infra.agents", "infra.guardrails"}
    ),
    "infra.guardrails": frozenset(
        {"infra.host", "infra.transport", "infra.machines", "infra.records", "infra.state"}
        | {"infra.ansible", "infra.agents"}
    ),
    "infra.records": frozenset({"infra.machines", "infra.agents", "infra.guardrails"}),
    "infra.machines": frozenset({"infra.ansible", "infra.agents", "infra.guardrails"}),
    "infra.state": frozenset(
        {"infra.records", "infra.ansible", "infra.agents", "infra.guardrails"}
    ),
    "infra.ansible": frozenset({"infra.agents", "infra.guardrails"}),
}
# What the command (cli/) imports only lazily, and only in the modules of the commands that
# need Prefect; every other cli module never imports it.
PREFECT_LAYERS = frozenset(
    {"prefect", "flows", "tasks", "blocks"}
    | {
        "orchestration.client",
        "orchestration.limits",
        "orchestration.placement",
        "orchestration.liveness",
        "orchestration.cluster_ca",
    }
)
PREFECT_COMMANDS = frozenset({"cli/run.py", "cli/janitor.py", "cli/production.py", "cli/worker.py"})


def product_files() -> list[Path]:
    files: list[Path] = []
    for entry in PRODUCT:
        path = ROOT / entry
        files.extend([path] if path.suffix == ".py" else sorted(path.rglob("*.py")))
    return files


def module_name(rel: Path) -> str:
    """`infra/state/blobs.py` -> `infra.state.blobs` (a package's __init__ is the package)."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _from_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(tree: ast.AST, module: str = "", is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) for every import anywhere in the tree, inside functions too; a
    `from a import b` gives `a.b`, and importlib.import_module("x") with a literal gives x."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _from_module(node, module, is_package)
            for alias in node.names:
                yield node.lineno, f"{source}.{alias.name}" if source else alias.name
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield node.lineno, node.args[0].value


def forbidden_imports(
    source: str, filename: str, forbidden: frozenset[str], import_time: bool = False
) -> list[str]:
    """Every import in `source` of a package in `forbidden`, as `file:line: imports x`; with
    `import_time`, only those that run when the module is imported (not those inside a function
    or lambda body, which wait until it is called)."""
    tree = ast.parse(source, filename)
    if import_time:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                node.body = []
            elif isinstance(node, ast.Lambda):
                node.body = ast.Constant(None)
    rel = Path(filename)
    module, is_package = module_name(rel), rel.name == "__init__.py"
    return [
        f"{filename}:{line}: imports {name}"
        for line, name in imports(tree, module, is_package)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def _scope_nodes(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """The nodes of one scope: the bodies of nested functions, lambdas and classes are not
    entered (their names, decorators, defaults, annotations and bases belong to this scope)."""
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            a = node.args
            parts = [*a.defaults, *a.kw_defaults]
            if not isinstance(node, ast.Lambda):
                parts += [*node.decorator_list, node.returns]
                parts += [x.annotation for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
                parts += [x.annotation for x in (a.vararg, a.kwarg) if x is not None]
        elif isinstance(node, ast.ClassDef):
            parts = [*node.decorator_list, *node.bases, *node.keywords]
        else:
            parts = list(ast.iter_child_nodes(node))
        stack.extend(reversed([c for c in parts if c is not None]))


NAMED_BINDINGS = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.ExceptHandler,
    ast.MatchAs,
    ast.MatchStar,
)


def _body(scope: ast.AST) -> list[ast.stmt]:
    return [ast.Expr(scope.body)] if isinstance(scope, ast.Lambda) else scope.body


def _bindings(scope: ast.AST, module: str, is_package: bool) -> dict[str, str | None]:
    """Names bound in one scope -> the fluid module (or module attribute) an import bound them
    to, or None when anything else binds them (a parameter, an assignment, a loop or with
    target, a def or class, a third-party import). Over-counting local bindings can only hide
    a reach-in, never report a false one."""
    bound: dict[str, str | None] = {}
    imported: dict[str, str] = {}
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        a = scope.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                bound[arg.arg] = None
    for node in _scope_nodes(_body(scope)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                if alias.name.split(".")[0] in FIRST_PARTY:
                    imported[name] = alias.name if alias.asname else name
                else:
                    bound[name] = None
        elif isinstance(node, ast.ImportFrom):
            source = _from_module(node, module, is_package)
            for alias in node.names:
                name = alias.asname or alias.name
                if source.split(".")[0] in FIRST_PARTY:
                    imported[name] = f"{source}.{alias.name}"
                else:
                    bound[name] = None
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound[node.id] = None
        elif isinstance(node, ast.Global | ast.Nonlocal):
            bound.update(dict.fromkeys(node.names))  # resolved elsewhere: not judged here
        elif isinstance(node, NAMED_BINDINGS) and node.name:
            bound[node.name] = None  # def, class, `except ... as`, `case ... as`
    for name, target in imported.items():
        # A name an import binds and something else binds too is ambiguous: not judged.
        bound.setdefault(name, target)
    return bound


def private_reach_ins(source: str, filename: str) -> list[str]:
    """Every use in `source` of another fluid module's private name, as `file:line: ...`."""
    tree = ast.parse(source, filename)
    rel = Path(filename)
    own, is_package = module_name(rel), rel.name == "__init__.py"
    own_defs = {
        n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)
    }  # `own.Name._x` is this module's own class

    def is_own(owner: str) -> bool:
        rest = owner.removeprefix(own + ".")
        return owner == own or (rest != owner and rest.split(".")[0] in own_defs)

    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = _from_module(node, own, is_package)
            if src.split(".")[0] in FIRST_PARTY and src != own:
                for alias in node.names:
                    if _is_private(alias.name):
                        found.append(f"{filename}:{node.lineno}: from {src} import {alias.name}")

    def visit(scope: ast.AST, outer: list[dict[str, str | None]]) -> None:
        here = [_bindings(scope, own, is_package), *outer]
        # A class body's names are not seen by the functions defined in it.
        inner = outer if isinstance(scope, ast.ClassDef) else here
        for node in _scope_nodes(_body(scope)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                visit(node, inner)
            elif isinstance(node, ast.Attribute) and _is_private(node.attr):
                chain, base = [node.attr], node.value
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if not isinstance(base, ast.Name) or any(_is_private(a) for a in chain[1:]):
                    continue  # not on a name, or an inner private is the one reported
                target = next((s[base.id] for s in here if base.id in s), None)
                if target is None:
                    continue
                owner = ".".join([target, *reversed(chain[1:])])
                if not is_own(owner):
                    dotted = ".".join([base.id, *reversed(chain)])
                    found.append(f"{filename}:{node.lineno}: {dotted} (private to {owner})")

    visit(tree, [])
    return found


def _report(problems: list[str], rule: str) -> str:
    return f"{rule}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    problems = []
    for path in product_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == layer:
            problems += forbidden_imports(path.read_text(), str(rel), FORBIDDEN[layer])
    assert not problems, _report(
        problems, f"{layer}/ must import nothing from {', '.join(sorted(FORBIDDEN[layer]))}"
    )


def test_no_module_reaches_into_another_modules_private_names() -> None:
    problems = []
    for path in product_files():
        problems += private_reach_ins(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, _report(
        problems,
        "a module uses only other modules' public names (make the name public, with a "
        "docstring, or move it to the module that owns it)",
    )


def test_the_command_imports_prefect_only_inside_functions() -> None:
    problems = []
    for path in product_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "cli":
            problems += forbidden_imports(
                path.read_text(), str(rel), PREFECT_LAYERS, import_time=True
            )
    assert not problems, _report(
        problems, "cli/ imports prefect, flows, tasks and blocks only inside the functions"
    )


def test_commands_that_need_no_prefect_never_import_it() -> None:
    problems = []
    for path in product_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "cli" and str(rel) not in PREFECT_COMMANDS:
            problems += forbidden_imports(path.read_text(), str(rel), PREFECT_LAYERS)
    assert not problems, _report(
        problems,
        f"cli/ modules other than {', '.join(sorted(PREFECT_COMMANDS))} must never import "
        f"{', '.join(sorted(PREFECT_LAYERS))} (sandbox, image and pool commands start fast)",
    )


def test_the_product_files_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in product_files()}
    assert {"infra/machines/sandboxes.py", "tasks/sandbox.py", "flows/agent_task.py"} <= names
    assert {"blocks/production_target.py", "cli/main.py", "cli/sandbox.py"} <= names


# The checks themselves: each catches what it is for, so none can pass by finding nothing.

LAZY_PREFECT = """
import os

def deploy():
    from prefect import flow
    import flows.janitor as j
    return importlib.import_module("tasks.sandbox")
"""


def test_the_import_rule_catches_top_level_lazy_and_dynamic_imports() -> None:
    found = forbidden_imports(LAZY_PREFECT, "infra/x.py", FORBIDDEN["infra"])
    assert found == [
        "infra/x.py:5: imports prefect.flow",
        "infra/x.py:6: imports flows.janitor",
        "infra/x.py:7: imports tasks.sandbox",
    ]
    assert forbidden_imports("from ..flows import agent_task\n", "tasks/x.py", FORBIDDEN["tasks"])
    assert forbidden_imports("import cli.main\n", "blocks/x.py", FORBIDDEN["blocks"])
    assert not forbidden_imports("import prefect\nimport infra\n", "tasks/x.py", FORBIDDEN["tasks"])
    assert forbidden_imports(LAZY_PREFECT, "cli/x.py", PREFECT_LAYERS, import_time=True) == []
    top = "import os\nfrom prefect import flow\nrun = lambda: __import__('flows')\n" + LAZY_PREFECT
    assert forbidden_imports(top, "cli/x.py", PREFECT_LAYERS, import_time=True) == [
        "cli/x.py:2: imports prefect.flow"
    ]


REACH_INS = """
from infra.machines import sandboxes
import infra.transport.ssh
from infra.state import capture as cap
from infra.records.store import _engine_for
from infra.transport.ssh import GuestConnection

def f(sandbox_id, settings):
    rec = sandboxes._record(sandbox_id, settings)
    key = infra.transport.ssh._parse_public_key(rec.host_key)
    return cap._memory, GuestConnection._transport
"""


def test_the_private_rule_catches_reach_ins() -> None:
    assert private_reach_ins(REACH_INS, "tasks/x.py") == [
        "tasks/x.py:5: from infra.records.store import _engine_for",
        "tasks/x.py:9: sandboxes._record (private to infra.machines.sandboxes)",
        "tasks/x.py:10: infra.transport.ssh._parse_public_key (private to infra.transport.ssh)",
        "tasks/x.py:11: cap._memory (private to infra.state.capture)",
        "tasks/x.py:11: GuestConnection._transport "
        "(private to infra.transport.ssh.GuestConnection)",
    ]


NOT_REACH_INS = """
import bashlex
from infra.records import store
from infra.machines import sandboxes

class Box:
    def __init__(self, store):
        self._store = store
        store._path("x")  # a parameter named like the module

    def run(self):
        return self._store._path("y")

def g(conn):
    sandboxes = [conn]
    return sandboxes[0]._private, bashlex.subst._paramexpand, store.session, conn._client
"""


def test_the_private_rule_ignores_locals_instances_own_modules_and_third_party() -> None:
    assert private_reach_ins(NOT_REACH_INS, "infra/x.py") == []
    own = "from infra import blobs\n\ndef f():\n    return blobs._path\n"
    assert private_reach_ins(own, "infra/blobs.py") == []
    assert private_reach_ins("from . import _helpers\n", "infra/state/x.py") == [
        "infra/state/x.py:1: from infra.state import _helpers"
    ]


def import_graph() -> dict[str, set[str]]:
    """fluid's modules -> the fluid modules each imports (lazily too; `from pkg import mod`
    counts as importing `pkg.mod`, and a package's own __init__ is not an edge)."""
    files = {module_name(p.relative_to(ROOT)): p for p in product_files()}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for _line, target in imports(tree, name, path.name == "__init__.py"):
            # `from a.b import c`: the module a.b.c when it exists, else a.b
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import one another round a circle (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles() -> None:
    circles = import_circles(import_graph())
    assert not circles, _report(
        [" <-> ".join(c) for c in circles],
        "modules that import one another (lazily too) make a circle; move what both need "
        "into a module that imports neither",
    )


def test_the_circle_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", sorted(INFRA_FORBIDDEN))
def test_each_infra_package_imports_only_what_it_stands_on(package: str) -> None:
    problems = []
    folder = Path(*package.split("."))
    for path in product_files():
        rel = path.relative_to(ROOT)
        if rel.parts[: len(folder.parts)] == folder.parts:
            problems += forbidden_imports(path.read_text(), str(rel), INFRA_FORBIDDEN[package])
    assert not problems, _report(
        problems,
        f"{folder}/ must import nothing from {', '.join(sorted(INFRA_FORBIDDEN[package]))}",
    )


def test_the_import_rule_catches_a_dotted_package() -> None:
    source = "from infra.machines import sandboxes\nimport infra.machinesx\n"
    found = forbidden_imports(source, "infra/host/x.py", frozenset({"infra.machines"}))
    assert found == ["infra/host/x.py:1: imports infra.machines.sandboxes"]


def test_the_tests_mirror_the_product_layout() -> None:
    """Each folder of tests/ is named for the product folder whose behaviour it specifies."""
    tests = ROOT / "tests"
    strays = [
        str(d.relative_to(ROOT))
        for d in sorted(tests.rglob("*"))
        if d.is_dir()
        and d.name != "__pycache__"
        and "__pycache__" not in d.parts
        and not (ROOT / d.relative_to(tests)).is_dir()
    ]
    assert not strays, _report(strays, "tests/ folders mirror product folders")
    assert {p.parent.relative_to(tests).as_posix() for p in tests.rglob("test_*.py")} >= {
        "infra/machines",
        "infra/state",
        "flows",
    }
