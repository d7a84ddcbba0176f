"""
Print pip constraints that pin every dependency the package declares to its
declared floor: the runtime dependencies and those of the runtime extras
(not the C{test}, C{docs} and C{release} extras: tools, not what users get). CI
installs C{.[test]} under these constraints and runs the unit suite, so a
floor that does not work fails CI instead of a user's install.

Fails if a declared dependency has no C{>=} floor: an unbounded one cannot
be tested at its lowest.

Usage: python .ci/lowest.py > constraints-lowest.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.*))?$"
)
#: Extras of tools for developing the package, not used by it.
NOT_RUNTIME = {"test", "docs", "release"}
FLOOR = re.compile(r">=\s*([0-9][0-9A-Za-z.!+-]*)")


def main() -> int:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    declared = list(project.get("dependencies", []))
    for extra, requirements in project.get("optional-dependencies", {}).items():
        if extra not in NOT_RUNTIME:
            declared += requirements
    floors: dict[str, str] = {}
    names: set[str] = set()
    problems = []
    for requirement in declared:
        match = REQUIREMENT.match(requirement)
        if match is None:
            problems.append(f"cannot read requirement {requirement!r}")
            continue
        name = re.sub(r"[-_.]+", "-", match["name"]).lower()
        names.add(name)
        floor = FLOOR.search(match["spec"])
        if floor is not None:
            marker = f"; {match['marker']}" if match["marker"] else ""
            floors[name] = f"{name}=={floor[1]}{marker}"
    # A name may appear without a floor where another line gives it one
    # (twisted[http2] beside twisted>=25.5).
    problems += [f"{name} declares no >= floor" for name in sorted(names - set(floors))]
    for problem in problems:
        print(f"lowest: {problem}", file=sys.stderr)
    print("\n".join(sorted(floors.values())))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
