"""Declared dependencies only: every third-party module the package imports belongs to a distribution that
pyproject.toml declares (``dependencies``, or the ``gpu`` extra for the Triton kernel), never one that merely
happens to be installed because something else pulled it in."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from tests.helpers import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

PACKAGE = ROOT / "lineage_scanner"
#: Extras whose distributions the package may import (lazily, behind a clear error: see measure.kernels).
EXTRAS = ("gpu",)
#: Import names found in the package but declared elsewhere, each with why; an entry no longer needed fails.
PENDING: dict[str, str] = {}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for e in EXTRAS for r in project["optional-dependencies"][e])]
    return {_normal(Requirement(r).name) for r in requirements}


def third_party_imports() -> dict[str, set[str]]:
    """Top-level name -> the package's files that import it (absolute imports that are not the standard
    library's or the package's own)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top != "lineage_scanner":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    owners = importlib.metadata.packages_distributions()
    allowed = declared()
    undeclared = {}
    for name, files in third_party_imports().items():
        distributions = {_normal(d) for d in owners.get(name, [name])}
        if not distributions & allowed and name not in PENDING:
            undeclared[name] = (sorted(distributions), sorted(files))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    stale = {name for name in PENDING if name not in third_party_imports() or
             {_normal(d) for d in owners.get(name, [name])} & allowed}
    assert not stale, f"no longer needed in PENDING: {stale}"


#: Run in a fresh interpreter: every import statement the package's own code executes (whether or not the
#: module is loaded already) must name the standard library, the package, or a module of ALLOWED; then every
#: module of the package is imported, so each import runs at least once where it is at module level.
GUARD = r"""
import builtins, importlib, json, pkgutil, sys

ALLOWED = set(json.loads(sys.argv[1]))
plain_import = builtins.__import__

def guarded(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    top = name.partition(".")[0]
    if (level == 0 and importer.startswith("lineage_scanner") and top not in ALLOWED
            and top not in sys.stdlib_module_names and top != "lineage_scanner"):
        raise ImportError(f"{importer} imports {name}, which pyproject.toml does not declare")
    return plain_import(name, globals, locals, fromlist, level)

builtins.__import__ = guarded
import lineage_scanner
names = ["lineage_scanner", *(m.name for m in pkgutil.walk_packages(lineage_scanner.__path__, "lineage_scanner."))]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


@pytest.mark.slow
def test_every_module_imports_with_only_declared_dependencies():
    owners = importlib.metadata.packages_distributions()
    allowed = declared()
    names = sorted({name for name, dists in owners.items() if {_normal(d) for d in dists} & allowed} | set(PENDING))
    done = subprocess.run([sys.executable, "-c", GUARD, json.dumps(names)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) == len(list(PACKAGE.rglob("*.py")))
