"""Times the cases that mmap_ninja 0.9.0 can do, with either library: run by bench_batches.py
in a subprocess (0.9.0 has the same import name), alternating the two libraries so that every
ratio compares runs made side by side.

    python _run_worker.py SITE DATA_DIR  ->  JSON {case: median seconds} on stdout

SITE is the folder holding mmap_ninja 0.9.0, or "-" for the mmap_ninja installed here.
"""

import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
site, data_dir = sys.argv[1], sys.argv[2]
if site != "-":
    sys.path.insert(0, site)
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from _timing import median_per_item, median_time  # noqa: E402

import mmap_ninja  # noqa: E402
from mmap_ninja.ragged import RaggedMmap  # noqa: E402
from mmap_ninja.string import StringsMmap  # noqa: E402

assert (mmap_ninja.__version__ == "0.9.0") == (site != "-"), mmap_ninja.__file__
indices = np.load(os.path.join(data_dir, "indices.npz"))
tokens = RaggedMmap(os.path.join(data_dir, "tokens"))
strings = StringsMmap(os.path.join(data_dir, "strings"))
images = RaggedMmap(os.path.join(data_dir, "images"))
result = {
    "tokens_list": median_time(lambda idx: tokens[idx], list(indices["tokens"])),
    "strings_list": median_time(lambda idx: strings[idx], list(indices["strings"])),
    "strings_ascii": median_time(lambda idx: strings[idx], list(indices["strings_ascii"])),
    "strings_unicode": median_time(lambda idx: strings[idx], list(indices["strings_unicode"])),
    "images_list": median_time(lambda idx: images[idx], list(indices["images"])),
    "tokens_single": median_per_item(lambda i: tokens[i], indices["tokens_single"].tolist()),
    "strings_single": median_per_item(lambda i: strings[i], indices["strings_single"].tolist()),
}
print(json.dumps(result))
