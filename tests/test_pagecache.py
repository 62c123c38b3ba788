"""mmap_ninja.pagecache: residency of a map's files in the page cache, and eviction."""

from __future__ import annotations

import numpy as np
import pytest

from mmap_ninja import RaggedMmap, pagecache


def test_evict_drops_every_page_of_a_map_and_reading_brings_them_back(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(5000, dtype=np.int64) + i for i in range(40)])
    resident, total = pagecache.residency(m.out_dir)
    assert total >= 40 * 5000 * 8
    pagecache.evict(m.out_dir)
    assert pagecache.residency(m.out_dir / "data.ninja")[0] == 0
    assert m.take(np.arange(40)).values.sum() == sum(int((np.arange(5000) + i).sum()) for i in range(40))
    data_resident, data_total = pagecache.residency(m.out_dir / "data.ninja")
    assert data_resident == data_total  # every sample was read back


def test_residency_counts_whole_pages_of_one_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    resident, total = pagecache.residency(path)
    assert total % 4096 == 0 and total >= 10 and 0 <= resident <= total
    (tmp_path / "empty").write_bytes(b"")
    assert pagecache.residency(tmp_path / "empty") == (0, 0)


def test_a_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        pagecache.evict(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="nothing"):
        pagecache.residency(tmp_path / "nothing")
