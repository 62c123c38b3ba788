"""The optional packages of the integrations (``pip install ".[EXTRA]"``): importing one that is
missing or broken raises an ``ImportError`` that names every package of the extra, the version
installed of each, and how to install the extra."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Dict


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"not installed"``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def require(user: str, extra: str, modules: Dict[str, str]) -> None:
    """Import each of ``modules`` (module name: the distribution that provides it), which
    ``user`` (a module of this package) needs; when one fails, raise an ``ImportError`` naming
    the distributions of the ``extra``, their installed versions and the cause."""
    for module, distribution in modules.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            versions = ", ".join(f"{name} {installed_version(name)}" for name in dict.fromkeys(modules.values()))
            raise ImportError(
                f"{user} needs {' and '.join(dict.fromkeys(modules.values()))}, which the {extra!r} extra installs at "
                f"versions that work together; importing {module} ({distribution}) failed: "
                f"{type(exc).__name__}: {exc}. Installed: {versions}. Install the extra from mmap_ninja's source "
                f"tree with pip install \".[{extra}]\" (pip install -c constraints.txt \".[{extra}]\" for the "
                f"versions its tests passed with)."
            ) from exc
