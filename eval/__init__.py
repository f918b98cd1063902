"""Benchmark evaluations: ``python -m eval`` (``eval/__main__.py``) and, for notebooks, ``eval.zeroshot(...)``
and ``eval.retrieval(...)`` (``eval/api.py``), imported on first use so that the command line starts fast."""

import sys
import types

API = ("zeroshot", "retrieval")


class _Package(types.ModuleType):
    """The submodules ``eval.zeroshot`` and ``eval.retrieval`` share the API functions' names. Importing one
    would set the package attribute to the module (``eval.zeroshot(...)`` then fails: a module is not callable);
    here the names stay the functions', and the modules stay importable as ``from eval.zeroshot import ...``."""

    def __setattr__(self, name, value):
        if name in API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def __getattr__(name: str):
    if name in API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(API)
sys.modules[__name__].__class__ = _Package
