"""What the commands of ``mmap-ninja`` share: the usage error, argument types, the suffixes and
reading of image files, sizes, and the paths an earlier version kept beside a map."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np

from .._format.kinds import KINDS
from ..base import map_type
from ..string import StringsMmap

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# What ``convert`` reads from a folder, in the order that breaks a tie when guessing the kind.
FOLDER_KINDS = (("images", IMAGE_SUFFIXES), ("texts", (".txt",)), ("npy", (".npy",)))
# The sub-folder of a converted map that holds the relative path of each sample.
PATHS = "paths"


class UsageError(Exception):
    """Wrong input: reported in one line, exit code 2."""


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


def disk_usage(path: Path) -> int:
    """Bytes that the files under ``path`` occupy on disk (holes of sparse files excluded)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def open_paths(path: Path) -> Optional[StringsMmap]:
    """The relative path of each sample kept beside the map at ``path`` by earlier versions of
    ``convert`` (``path/paths``; now the paths are the samples' keys), or ``None`` when it has
    none."""
    folder = path / PATHS
    kind = KINDS.get(map_type(folder)) if folder.is_dir() else None  # type: ignore[arg-type]
    if kind is None or not kind.text:
        return None
    return StringsMmap(folder, mode="rb")


def _paths_to_extend(out: Path, samples: int) -> Optional[StringsMmap]:
    """``open_paths(out)``, checked to hold one path per sample of the map's ``samples`` before
    an append adds more."""
    paths = open_paths(out)
    if paths is not None and len(paths) != samples:
        raise UsageError(f"{out / PATHS} holds {len(paths):,} paths for {samples:,} samples: remove it to append "
                         f"without paths, or rebuild the map with --force")
    return paths


def positive(text: str) -> int:
    """An argument that must be a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def read_image(path: Path) -> np.ndarray:
    """The pixels of an image file, as ``uint8`` (H, W) or (H, W, channels)."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install 'mmap_ninja[images]'") from None
    with Image.open(path) as image:
        return np.asarray(image)


