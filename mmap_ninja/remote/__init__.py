"""Maps in object storage (``pip install "mmap_ninja[remote]"``): read through a bounded local
cache shared by every process of a machine, published without a shared disk.

``ShardedMmap("s3://bucket/corpus", cache_dir=..., cache_limit="20GB")`` (and
``mmap_ninja.open_existing(url)``) reads the map at a URL: the manifest in one or two small GETs,
each part downloaded whole on its first read, checked (size and CRC-32) and then read by the
same compiled readers as a local part. ``push(local_map, url)`` and ``pull(url, local_dir)``
move whole maps; ``upload_part`` and ``commit`` let many machines write one map (Dask and Ray
writes to a URL use them); ``gc`` removes abandoned uploads, ``verify`` checks a URL.

Object storage is reached through fsspec (s3fs for ``s3://``), never a client of our own;
credentials and endpoint come from each store's standard environment (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``) and from
``storage_options``. See FORMAT.md, section 15, for what is stored where.
"""

from __future__ import annotations

from .cache import Cache, CacheFull, Mirror, default_cache_dir, parse_size
from .store import RemoteError, Store, is_url
from .transfer import commit, gc, latest_manifest, pull, push, upload_part, verify

__all__ = ["push", "pull", "commit", "upload_part", "gc", "verify", "latest_manifest", "Cache", "CacheFull",
           "Mirror", "Store", "RemoteError", "is_url", "parse_size", "default_cache_dir"]
