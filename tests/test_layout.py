"""The layout is the architecture: the product path never imports the training path, and the batch job's
modules import each other in one direction only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_MODULES = sorted(p.stem for p in (ROOT / "s2cnet").glob("*.py") if p.stem != "__init__")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions and TYPE_CHECKING blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_product_modules_never_import_training():
    offenders = {m: sorted(i for i in imported_modules(ROOT / "s2cnet" / f"{m}.py") if i.startswith("s2cnet.training"))
                 for m in PRODUCT_MODULES}
    assert not {m: i for m, i in offenders.items() if i}, offenders


def test_importing_the_product_path_loads_no_training_module():
    code = ("import sys, s2cnet.cropper, s2cnet.cli, s2cnet.overlay, s2cnet.choice, s2cnet.faces;"
            "from s2cnet import Cropper; Cropper.from_pretrained();"
            "print(','.join(sorted(m for m in sys.modules if m.startswith('s2cnet.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"training modules loaded by the product path: {out.stdout}"


def test_pipelines_have_no_import_cycle():
    names = {p.stem for p in (ROOT / "pipelines").glob("*.py")}
    graph = {n: {i.split(".")[1] for i in imported_modules(ROOT / "pipelines" / f"{n}.py")
                 if i.startswith("pipelines.") and i.split(".")[1] in names} - {n} for n in names}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            assert state.get(m) != 1, f"import cycle: {' -> '.join([*path, n, m])}"
            if m not in state:
                visit(m, [*path, n])
        state[n] = 2

    for n in sorted(names):
        if n not in state:
            visit(n, [])
