"""
Fail on any public name of the package that the API reference would show
as "Undocumented": modules, classes, functions, methods, properties and
module-level names. Public: no part of its dotted name starts with an
underscore. A method that overrides a documented one (ours, as pydoctor
shows it, or Twisted's: C{render}, C{dataReceived}, ..., as C{inspect.getdoc}
finds it) takes its base's docstring. Dunder methods are exempt: a class's docstring
documents its constructor.

Reads the package as pydoctor does (the same model the reference is built
from), so what it checks is what the reference shows.

Usage: python .ci/undocumented.py sse_twisted
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from pydoctor import model
from pydoctor.options import Options

CHECKED = {
    model.DocumentableKind.PACKAGE,
    model.DocumentableKind.MODULE,
    model.DocumentableKind.CLASS,
    model.DocumentableKind.INTERFACE,
    model.DocumentableKind.EXCEPTION,
    model.DocumentableKind.FUNCTION,
    model.DocumentableKind.METHOD,
    model.DocumentableKind.CLASS_METHOD,
    model.DocumentableKind.STATIC_METHOD,
    model.DocumentableKind.PROPERTY,
    model.DocumentableKind.CONSTANT,
    model.DocumentableKind.VARIABLE,
    model.DocumentableKind.TYPE_ALIAS,
}


def public(ob: model.Documentable) -> bool:
    return not any(part.startswith("_") for part in ob.fullName().split("."))


def inherited_doc(ob: model.Documentable) -> bool:
    """Whether a method without a docstring inherits one, at run time."""
    parent = ob.parent
    if not isinstance(parent, model.Class):
        return False
    module = importlib.import_module(parent.module.fullName())
    cls = getattr(module, parent.name, None)
    member = getattr(cls, ob.name, None)
    return bool(member is not None and inspect.getdoc(member))


def main() -> int:
    package = Path(sys.argv[1] if len(sys.argv) > 1 else "sse_twisted")
    system = model.System(Options.from_args(["-q", "--docformat=epytext"]))
    builder = system.systemBuilder(system)
    builder.addModule(package)
    builder.buildModules()
    missing = []
    for ob in system.allobjects.values():
        if ob.kind not in CHECKED or not public(ob):
            continue
        if ob.name.startswith("__") and ob.name.endswith("__"):
            continue
        if "." in ob.name:  # a property's setter or deleter: the getter documents it
            continue
        if any(source.docstring for source in ob.docsources()):
            continue
        if isinstance(ob, model.Function | model.Attribute) and inherited_doc(ob):
            continue
        missing.append(f"{ob.fullName()} ({ob.kind.name.lower()})")
    for name in sorted(missing):
        print(f"undocumented: {name}")
    print(f"{len(missing)} public names without a docstring")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
