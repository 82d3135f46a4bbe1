"""docs/architecture.md's layer table is the import rule: every package module (and every subpackage, listed
as `name/`) sits in exactly one layer, and imports modules of its own layer or of the layers below it only;
evaluations/ imports none of them."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "guided_diffusion"


def layers_on_the_page():
    """[(layer name, {module names})] from the page's table, top layer first (scripts: "scripts/*")."""
    rows = re.findall(r"^\| ([a-z ]+) \| (`.*?) \|", (REPO / "docs" / "architecture.md").read_text(), re.M)
    return [(name, {m.removesuffix(".py").removesuffix("/") for m in re.findall(r"`([^`]+)`", cell)})
            for name, cell in rows]


def package_units():
    """{name: [files]}: each module of the package, and each subpackage with all its files."""
    units = {p.stem: [p] for p in (REPO / PACKAGE).glob("*.py") if p.stem != "__init__"}
    units.update({d.name: sorted(d.glob("*.py")) for d in (REPO / PACKAGE).iterdir() if (d / "__init__.py").exists()})
    return units


def package_imports(source, subpackage=None):
    """Names of the guided_diffusion modules (or subpackages) Python source imports (at any depth of its code);
    subpackage: the one the source belongs to, which its own relative imports (level 1) name."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and subpackage and node.level == 1:
            found.add(subpackage)
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == PACKAGE):
            parts = (node.module or "").split(".")
            parts = parts[1:] if parts[0] == PACKAGE else parts  # "guided_diffusion[.x]" -> [] or ["x"]
            found |= {parts[0]} if parts and parts[0] else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith(PACKAGE + ".")}
    return found


def test_every_module_is_in_exactly_one_layer():
    listed = [m for _, modules in layers_on_the_page() for m in modules if m != "scripts/*"]
    assert sorted(listed) == sorted(package_units()), "add new modules to the table in docs/architecture.md (once)"


def test_modules_import_only_their_own_layer_and_the_layers_below():
    layers = layers_on_the_page()
    assert layers[0] == ("scripts", {"scripts/*"})
    depth = {m: i for i, (_, modules) in enumerate(layers) for m in modules}
    files = [(name, path, name if len(paths) > 1 or path.parent.name == name else None)
             for name, paths in package_units().items() for path in paths]
    files += [("scripts/*", path, None) for path in (REPO / "scripts").glob("*.py")]
    broken = []
    for name, path, subpackage in sorted(files):
        own = depth[name]
        broken += [f"{path.name} of {name} ({layers[own][0]}) imports {m} ({layers[depth[m]][0]})"
                   for m in sorted(package_imports(path.read_text(), subpackage)) if depth[m] < own]
    assert not broken


def test_the_evaluations_import_nothing_of_the_package_but_its_error_classes():
    imports = {p.name: package_imports(p.read_text()) - {"errors"} for p in (REPO / "evaluations").glob("*.py")}
    assert {name: found for name, found in imports.items() if found} == {}
    assert not package_imports((REPO / PACKAGE / "errors.py").read_text())  # errors.py stands alone


def test_the_import_reader_sees_every_form():
    source = ("from . import dist_util, logger\nfrom .checkpoint import load_checkpoint\n"
              "from guided_diffusion.config import TrainConfig\nfrom guided_diffusion import build\n"
              "import guided_diffusion.unet as unet\ndef f():\n    from .cli import parse_configs\n"
              "import os\nfrom torch import nn\n")
    assert package_imports(source) == {"dist_util", "logger", "checkpoint", "config", "build", "unet", "cli"}
