"""Print cueaudit's requirements for the given extras, one per line, from pyproject.toml.

The Dockerfile installs them before it copies the sources, so a code change does not reinstall
torch (the layer depends on pyproject.toml and the constraints only):

    python deploy/requirements.py audit cluster timm > requirements.txt   # base + those extras
    python deploy/requirements.py                                          # the base (the slim gate)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SELF = re.compile(r"^cueaudit\[([^\]]+)\]$")


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The base dependencies plus those of ``extras`` (``cueaudit[a,b]`` references expanded)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    reqs, seen, todo = list(project["dependencies"]), set(), list(extras)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no extra {extra!r}; valid: {', '.join(sorted(optional))}")
        seen.add(extra)
        for r in optional[extra]:
            m = SELF.match(r.replace(" ", ""))
            if m:
                todo += m.group(1).split(",")
            else:
                reqs.append(r)
    return list(dict.fromkeys(reqs))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
