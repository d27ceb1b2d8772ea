"""Checks run inside a clean venv by the ``wheels`` nox session (stdlib only).

``check_install.py imports DIST``
    every top-level package of the installed distribution DIST imports, its
    ``dotmac_events`` entry points load, it ships ``py.typed``, and it puts no
    ``__init__.py`` into the shared namespaces ``dotmac`` and ``dotmac_shared``.

``check_install.py closure REQUIREMENT DIST [DIST ...]``
    the venv holds exactly what REQUIREMENT needs (it and its dependencies, with
    markers and extras evaluated), and of this repository's distributions exactly
    the DISTs named.
"""

from __future__ import annotations

import importlib
import re
import sys
from importlib import metadata
from pathlib import PurePosixPath

NAMESPACES = ("dotmac", "dotmac_shared")
# Installed with the venv itself, not by the requirement.
SEEDED = {"pip", "setuptools", "wheel"}


def _require(condition: object, message: str) -> None:
    # Not assert: the checks must hold under python -O too.
    if not condition:
        raise SystemExit(f"check_install: {message}")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_imports(dist_name: str) -> None:
    dist = metadata.distribution(dist_name)
    files = [PurePosixPath(str(f)) for f in dist.files or ()]
    inits = {f.parent for f in files if f.name == "__init__.py" and ".dist-info" not in str(f)}
    for namespace in NAMESPACES:
        _require(PurePosixPath(namespace) not in inits, f"{dist_name} ships {namespace}/__init__.py")
    tops = sorted(".".join(d.parts) for d in inits if d.parent not in inits)
    _require(tops, f"{dist_name} installs no package")
    _require(any(f.name == "py.typed" for f in files), f"{dist_name} ships no py.typed")
    for name in tops:
        importlib.import_module(name)
    points = [ep for ep in dist.entry_points if ep.group == "dotmac_events"]
    for ep in points:
        ep.load()
    print(f"{dist_name} {dist.version}: imports {', '.join(tops)}; entry points {[ep.name for ep in points]}")


def _needs(requirement: str) -> set[str]:
    """``requirement`` and everything it pulls in, by distribution name."""
    # The venv holds only what is checked, plus pip: use the packaging pip carries.
    from pip._vendor.packaging.requirements import Requirement

    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(requirement)]
    while todo:
        req = todo.pop()
        extras = frozenset(req.extras)
        if (_norm(req.name), extras) in seen:
            continue
        seen.add((_norm(req.name), extras))
        for line in metadata.requires(req.name) or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append(sub)
    return {name for name, _ in seen}


def check_closure(requirement: str, ours: list[str]) -> None:
    installed = {_norm(d.metadata["Name"]) for d in metadata.distributions()}
    # What the venv was seeded with (pip, and setuptools and wheel on older Pythons).
    installed -= set().union(*(_needs(tool) for tool in SEEDED if tool in installed))
    needed = _needs(requirement)
    extra = sorted(installed - needed)
    missing = sorted(needed - installed)
    _require(not extra, f"installed but not needed: {extra}")
    _require(not missing, f"needed but not installed: {missing}")
    mine = sorted(n for n in installed if n.startswith("dotmac-"))
    _require(mine == sorted(_norm(n) for n in ours), f"this repository's distributions installed: {mine}")
    print(
        f"{requirement}: {len(installed)} distributions, exactly its closure: {', '.join(sorted(installed))}"
    )


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "imports":
        check_imports(argv[1])
    elif len(argv) >= 3 and argv[0] == "closure":
        check_closure(argv[1], argv[2:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
