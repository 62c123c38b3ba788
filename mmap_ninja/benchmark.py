"""``mmap-ninja bench`` under its earlier import path: see ``mmap_ninja.cli.bench``."""

from .cli.bench import add_bench_command, generate_images, generate_texts  # noqa: F401
