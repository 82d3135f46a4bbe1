"""docs/architecture.md's layer table is the import rule: every package module (a subpackage's modules listed
as `text/model.py`) sits in exactly one layer, and imports modules of its own layer or of the layers below it
only; evaluations/ imports none of them. A subpackage's __init__.py is no module of the table: importing the
subpackage itself, or a name it re-exports (`from guided_diffusion import editing`, `from
guided_diffusion.editing import repaint`), imports what its __init__.py imports."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "guided_diffusion"


def layers_on_the_page():
    """[(layer name, {module names})] from the page's table, top layer first (scripts: "scripts/*")."""
    rows = re.findall(r"^\| ([a-z ]+) \| (`.*?) \|", (REPO / "docs" / "architecture.md").read_text(), re.M)
    return [(name, {m.removesuffix(".py") for m in re.findall(r"`([^`]+)`", cell)}) for name, cell in rows]


def package_modules():
    """{name: path} of every module of the package: "unet", and "text/model" for a subpackage's."""
    root = REPO / PACKAGE
    return {str(p.relative_to(root).with_suffix("")): p for p in root.rglob("*.py") if p.stem != "__init__"}


def module_name(parts):
    """The package module that dotted parts below guided_diffusion name (["text", "model", "X"] -> "text/model")."""
    parts = [part for part in parts if part]
    return "/".join(parts[:2]) if (REPO / PACKAGE / parts[0]).is_dir() else parts[0]


def package_imports(source, within=()):
    """Names of the guided_diffusion modules Python source imports (at any depth of its code); within: the
    subpackage path of the source's module (("text",) for text/model.py), where relative imports start.
    A subpackage, or a name of its __init__.py, stands for the modules its __init__.py imports."""
    return {m for name in _imports(source, within) for m in _through_init(name)}


def _through_init(name):
    """{name} for a module; for a subpackage ("editing") or a name it re-exports ("editing/repaint"), the
    modules its __init__.py imports."""
    path = REPO / PACKAGE / name
    if path.with_suffix(".py").is_file():
        return {name}
    init = (path if path.is_dir() else path.parent) / "__init__.py"
    within = init.parent.relative_to(REPO / PACKAGE).parts
    return package_imports(init.read_text(), within) if init.is_file() and within else {name}


def _imports(source, within):
    """package_imports's names before a subpackage's __init__.py is looked through."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == PACKAGE):
            base = list(within)[:len(within) - node.level + 1] if node.level else []
            parts = (node.module or "").split(".")
            parts = base + (parts[1:] if parts[0] == PACKAGE else parts)
            parts = [part for part in parts if part]
            if not parts or (REPO / PACKAGE / Path(*parts)).is_dir():  # "from <package> import <modules>"
                found |= {module_name(parts + [alias.name]) for alias in node.names}
            else:
                found.add(module_name(parts))
        elif isinstance(node, ast.Import):
            found |= {module_name(alias.name.split(".")[1:]) for alias in node.names
                      if alias.name.startswith(PACKAGE + ".")}
    return found


def test_every_module_is_in_exactly_one_layer():
    listed = [m for _, modules in layers_on_the_page() for m in modules if m != "scripts/*"]
    assert sorted(listed) == sorted(package_modules()), "add new modules to the table in docs/architecture.md (once)"


def test_modules_import_only_their_own_layer_and_the_layers_below():
    layers = layers_on_the_page()
    assert layers[0] == ("scripts", {"scripts/*"})
    depth = {m: i for i, (_, modules) in enumerate(layers) for m in modules}
    files = [(name, path, tuple(name.split("/")[:-1])) for name, path in package_modules().items()]
    files += [("scripts/*", path, ()) for path in (REPO / "scripts").glob("*.py")]
    broken = []
    for name, path, within in sorted(files):
        own = depth[name]
        broken += [f"{name} ({layers[own][0]}) imports {m} ({layers[depth[m]][0]})"
                   for m in sorted(package_imports(path.read_text(), within)) if depth[m] < own]
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


def test_the_import_reader_resolves_subpackage_modules():
    inside = ("from .tokenizer import get_encoder\nfrom ..unet import UNetModel\nfrom ..text import prompts\n"
              "from .. import nn\n")
    assert package_imports(inside, ("text",)) == {"text/tokenizer", "unet", "text/prompts", "nn"}
    outside = ("from .text.model import TextUNet\nfrom guided_diffusion.text import tokenizer\n"
               "import guided_diffusion.text.model\n")
    assert package_imports(outside) == {"text/model", "text/tokenizer"}


def test_the_import_reader_looks_through_a_subpackages_init():
    init = package_imports((REPO / PACKAGE / "editing" / "__init__.py").read_text(), ("editing",))
    assert init == {"editing/methods"}
    reexported = ("from guided_diffusion import editing\nfrom guided_diffusion.editing import repaint\n"
                  "import guided_diffusion.editing\nfrom .editing import dps\n")
    assert package_imports(reexported) == init
    assert package_imports("from guided_diffusion.editing import run, operators\n") == {"editing/run",
                                                                                          "editing/operators"}
