"""Old top-level module names (before everything moved under ``cdp``), for models pickled with them.

MLflow's pyfunc models pickle their Python class by reference: a model that ``cdp train`` registered
before the move names ``tagging.predictive.ProbabilityModel``. The finder below resolves such an old
name to its ``cdp`` module with a :class:`DeprecationWarning`. A real package of the same name
(another project's ``features``) always wins: the alias is only used where the import would
otherwise fail. Retrain (``cdp train``) to register
models under the new names.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

# old module name -> new one; packages map their submodules by prefix
LEGACY_MODULES: dict[str, str] = {
    "identity": "cdp.identity",
    "features": "cdp.features",
    "tagging": "cdp.tagging",
    "expectations.quality": "cdp.expectations.quality",
    "expectations.audience": "cdp.audiences.language",
    "expectations.activation": "cdp.audiences.activation",
    "expectations.privacy": "cdp.privacy",
    "jobs.lake": "cdp.lake",
    "jobs.sources": "cdp.sources",
    "jobs.config": "cdp.runtime.config",
}


def new_name(old: str) -> str | None:
    """The ``cdp`` module an old top-level module name now lives at (None: not an old name)."""
    for legacy, target in LEGACY_MODULES.items():
        if old == legacy:
            return target
        if old.startswith(legacy + ".") and legacy.count(".") == 0:
            return target + old[len(legacy):]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # noqa: ANN001, ANN201 - importlib protocol
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:  # the target module is already executed
        return None


class LegacyModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves old module names to their ``cdp`` modules, only when nothing else provides them.

    It sits first in ``sys.meta_path`` so that a submodule of an aliased package (``tagging.clv``)
    resolves to the one ``cdp.tagging.clv`` module rather than a second copy of it; an old top-level
    name is only aliased when no other finder can import it, so another project's ``features`` wins.
    """

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        new = new_name(fullname)
        if new is None:
            return None
        parent = fullname.rpartition(".")[0]
        if parent:
            if not getattr(sys.modules.get(parent), "__name__", "").startswith("cdp."):
                return None  # the parent is a real package of that name: not ours to answer
        elif any(finder.find_spec(fullname, path, target) is not None
                 for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec")):
            return None
        if importlib.util.find_spec(new) is None:
            return None
        warnings.warn(f"module {fullname!r} moved to {new!r}; models registered with the old name still "
                      "load, retrain them (cdp train) to register them under the new one",
                      DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install_legacy_module_aliases() -> None:
    """Put the finder first in ``sys.meta_path``, once."""
    if not any(isinstance(finder, LegacyModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, LegacyModuleFinder())
