"""``python -m mmap_ninja``: the ``mmap-ninja`` command."""

import sys

from .cli import main

sys.exit(main())
