"""Tests of mmap_ninja.megatron: Megatron's indexed datasets in and out, read back by the real
megatron-core."""

from __future__ import annotations

import errno
import os
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmap_ninja import _storage, megatron
from mmap_ninja.cli import main
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # megatron-core warns that Transformer Engine and Apex are missing
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

SHARED = sorted(megatron.DTYPE_CODES, key=str)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(SHARED), lengths=st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_exported_maps_read_back_identically_in_megatron_and_back(tmp_path_factory, dtype, lengths):
    folder = tmp_path_factory.mktemp("x")
    rng = np.random.default_rng(len(lengths))
    samples = [(rng.random(n) * 100).astype(dtype) for n in lengths]
    m = RaggedMmap.from_lists(folder / "m", samples)
    megatron.export(m, folder / "corpus", chunk=5)
    if sum(lengths):  # megatron-core cannot map an empty .bin
        theirs = IndexedDataset(str(folder / "corpus"))
        assert len(theirs) == len(samples)
        for i, sample in enumerate(samples):
            assert theirs[i].dtype == dtype and np.array_equal(theirs[i], sample)
    for name, link in (("back", True), ("copied", False)):  # linked whenever .bin holds values, and copied
        back = megatron.to_ragged(folder / "corpus", folder / name, batch_size=4, link=link)
        assert back.dtype == dtype and len(back) == len(samples)
        assert all(np.array_equal(back[i], sample) for i, sample in enumerate(samples))
        assert back.verify(deep=True) == []
    linked = (folder / "back" / "data.ninja").stat().st_ino == (folder / "corpus.bin").stat().st_ino
    assert linked == bool(sum(lengths))


@pytest.mark.parametrize("dtype", SHARED, ids=str)
def test_files_written_by_megatrons_builder_become_a_map(tmp_path, dtype):
    samples = [(np.arange(n) * 3 + 1).astype(dtype) for n in (5, 0, 2, 7)]
    build_pair(tmp_path / "theirs", samples, dtype)
    m = megatron.to_ragged(tmp_path / "theirs", tmp_path / "m")
    assert_reads(m, samples)
    copied = megatron.to_ragged(tmp_path / "theirs", tmp_path / "copied", link=False)
    assert_reads(copied, samples)


def test_what_megatron_cannot_hold_is_refused_and_damaged_indexes_are_named(tmp_path):
    nested = RaggedMmap.from_lists(tmp_path / "n", [np.zeros((2, 3), np.int32)])
    with pytest.raises(ValueError, match="1-d sequences"):
        megatron.export(nested, tmp_path / "x")
    wide = RaggedMmap.from_lists(tmp_path / "w", [np.zeros(3, np.uint64)])
    with pytest.raises(TypeError, match="not uint64"):
        megatron.export(wide, tmp_path / "x")
    assert not list(tmp_path.glob("x.*"))  # nothing left behind
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(4, dtype=np.int16)] * 3)
    megatron.export(m, tmp_path / "c")
    idx = tmp_path / "c.idx"
    raw = bytearray(idx.read_bytes())
    raw[-8 * 4 - 8 * 3 - 4 * 3] = 99  # a length far past the end of c.bin
    idx.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"c.idx: a sequence lies outside .*c.bin"):
        megatron.to_ragged(tmp_path / "c", tmp_path / "bad")
    idx.write_bytes(b"not an index")
    with pytest.raises(ValueError, match="no MMIDIDX header"):
        megatron.read_index(tmp_path / "c")
    assert not (tmp_path / "bad").exists()


# -- conversion by link, and the command line ---------------------------------------------------


def run(capsys, *args):
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def build_pair(prefix, samples, dtype=np.int32):
    """``PREFIX.bin``/``PREFIX.idx`` of ``samples`` written by megatron-core's builder."""
    import torch

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.dtype(dtype).type)  # a numpy type, as it expects
    for sample in samples:
        builder.add_item(torch.from_numpy(np.asarray(sample, dtype=dtype)))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")


def write_index(prefix, dtype, lengths, pointers):
    """A ``PREFIX.idx`` written by hand, with the given lengths (elements) and pointers (bytes)."""
    lengths, pointers = np.asarray(lengths, np.int32), np.asarray(pointers, np.int64)
    with open(f"{prefix}.idx", "wb") as out:
        out.write(megatron.HEADER + struct.pack("<QB", 1, megatron.DTYPE_CODES[np.dtype(dtype)]))
        out.write(struct.pack("<QQ", len(lengths), len(lengths) + 1))
        out.write(lengths.tobytes() + pointers.tobytes() + np.arange(len(lengths) + 1, dtype=np.int64).tobytes())


def token_samples(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50_000, size=k, dtype=np.int32) for k in rng.integers(0, 300, size=n)]


def assert_reads(m, samples):
    assert len(m) == len(samples)
    assert all(m[i].dtype == samples[i].dtype and np.array_equal(m[i], samples[i]) for i in range(len(samples)))


def no_checksum_notes(report):
    return [note for note in report.notes if "carry no checksum" in note]


def test_a_builders_pair_is_linked_and_megatron_reads_its_documents_after_the_map_grows_apart(tmp_path, capsys):
    samples = token_samples()
    build_pair(tmp_path / "corpus", samples)
    size = (tmp_path / "corpus.bin").stat().st_size
    code, out, err = run(capsys, "convert", "--from", "megatron", tmp_path / "corpus", tmp_path / "m",
                         "--batch-size", 1000)
    assert code == 0 and "hard-linked to" in out and "carry no checksum" in out and "samples/s" in err  # a bar
    data = tmp_path / "m" / "data.ninja"
    assert data.stat().st_ino == (tmp_path / "corpus.bin").stat().st_ino and data.stat().st_nlink == 2
    m = RaggedMmap(tmp_path / "m")
    theirs = IndexedDataset(str(tmp_path / "corpus"))
    assert m.dtype == np.int32 and len(theirs) == len(samples)
    assert all(np.array_equal(m[i], theirs[i]) for i in range(len(samples)))
    assert_reads(m, samples)
    report = m.verify(deep=True)
    assert report == [] and no_checksum_notes(report) == [
        f"{data}: bytes [0, {size}) carry no checksum: they were written before checksums were recorded (by "
        f"mmap_ninja 0.9.0), or taken over from another file without being read (mmap_ninja.megatron.to_ragged "
        f"links or clones Megatron's .bin so, unless checksum=True)"]
    more = [np.arange(7, dtype=np.int32), np.array([], np.int32)]
    m.extend(more)  # the map first takes a copy of its own: corpus.bin is not written
    assert (tmp_path / "corpus.bin").stat().st_size == size and (tmp_path / "corpus.bin").stat().st_nlink == 1
    assert data.stat().st_nlink == 1 and data.stat().st_size == size + 28
    assert_reads(RaggedMmap(tmp_path / "m"), samples + more)
    report = RaggedMmap(tmp_path / "m").verify(deep=True)
    assert report == [] and len(no_checksum_notes(report)) == 1 and f"[0, {size})" in report.notes[0]
    entries = _storage.read_checksum_entries(tmp_path / "m" / "checksums.ninja")
    assert entries[-1][:2] == (size, 28)  # the extension has its own checksum
    again = IndexedDataset(str(tmp_path / "corpus"))
    assert len(again) == len(samples) and all(np.array_equal(again[i], samples[i]) for i in range(len(samples)))


def test_checksum_reads_the_linked_file_and_verify_finds_it_changed_or_truncated(tmp_path, capsys):
    samples = token_samples(500, seed=1)
    build_pair(tmp_path / "c", samples)
    m, how, _ = megatron.convert(tmp_path / "c", tmp_path / "m", batch_size=128, checksum=True)
    assert how == "linked" and m.mode == "r"
    report = m.verify(deep=True)
    assert report == [] and report.notes == []
    with open(tmp_path / "c.bin", "r+b") as f:  # Megatron's file changed in place: the map's bytes too
        f.seek(40)
        f.write(b"\xff\xff\xff\xff")
    assert m.verify() == [] and "do not match their checksum" in m.verify(deep=True)[0]
    build_pair(tmp_path / "c", samples[:10])  # the builder opens c.bin with "wb": the shared file is truncated
    report = RaggedMmap.verify(m)
    assert len(report) == 1 and f"{tmp_path / 'm' / 'data.ninja'}: holds" in report[0]
    code, out, _ = run(capsys, "verify", tmp_path / "m")
    assert code == 1 and "data.ninja: holds" in out


def test_copy_when_asked_for_or_when_the_file_cannot_be_linked(tmp_path, capsys, monkeypatch):
    samples = token_samples(800, seed=2)
    build_pair(tmp_path / "c", samples)
    code, out, _ = run(capsys, "convert", "--from", "megatron", tmp_path / "c", tmp_path / "copied", "--copy",
                       "--quiet")
    assert code == 0 and "the tokens were copied (a copy was asked for)" in out
    data = tmp_path / "copied" / "data.ninja"
    assert data.stat().st_ino != (tmp_path / "c.bin").stat().st_ino and data.stat().st_nlink == 1
    m = RaggedMmap(tmp_path / "copied")
    assert_reads(m, samples)
    report = m.verify(deep=True)
    assert report == [] and report.notes == []  # copied bytes have their checksum

    def cross_device(source, target, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(megatron, "_clone", lambda source, target: False)  # as on a file system without reflinks
    monkeypatch.setattr(os, "link", cross_device)
    code, out, err = run(capsys, "convert", "--from", "megatron", tmp_path / "c.idx", tmp_path / "fallback",
                         "--quiet")
    assert code == 0 and err == ""
    assert f"the tokens were copied ({tmp_path / 'c.bin'} cannot be linked into the map (Invalid cross-device" in out
    m = RaggedMmap(tmp_path / "fallback")
    assert (tmp_path / "fallback" / "data.ninja").stat().st_nlink == 1
    assert_reads(m, samples)
    report = m.verify(deep=True)
    assert report == [] and report.notes == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.idx", "copied", "fallback"]


def test_sequences_that_do_not_lie_back_to_back_are_copied(tmp_path):
    values = np.arange(100, dtype=np.int16) * 3
    values.tofile(tmp_path / "c.bin")
    cases = {  # (lengths, pointers in bytes), read by megatron-core and copied here
        "reversed": ([10, 20, 5], [70, 30, 0]),
        "gaps": ([10, 0, 20], [4, 100, 60]),
        "shared": ([10, 10, 30], [0, 0, 10]),
        "short": ([10, 20], [0, 20]),  # back to back, but c.bin holds more than they use
    }
    for name, (lengths, pointers) in cases.items():
        write_index(tmp_path / "c", np.int16, lengths, pointers)
        theirs = IndexedDataset(str(tmp_path / "c"))
        m, how, reason = megatron.convert(tmp_path / "c", tmp_path / name)
        assert how == "copied", name
        assert reason == ("c.bin holds 140 bytes past its last sequence" if name == "short" else
                          f"the sequences of {tmp_path / 'c.idx'} do not lie back to back from byte 0").replace(
                              "c.bin", str(tmp_path / "c.bin")), name
        assert_reads(m, [np.array(theirs[i]) for i in range(len(lengths))])
        assert m.verify(deep=True) == [] and m.verify(deep=True).notes == []
    write_index(tmp_path / "c", np.int16, [100], [0])  # the whole file: linked
    whole = megatron.convert(tmp_path / "c", tmp_path / "whole")
    assert whole.how in ("linked", "cloned") and whole.reason == "" and isinstance(whole.map, megatron.RaggedMmap)
    again = megatron.to_ragged(tmp_path / "c", tmp_path / "again")
    assert [sample.tolist() for sample in again] == [sample.tolist() for sample in whole.map]


def test_empty_datasets_are_copied_into_maps_that_0_9_0_can_map(tmp_path):
    (tmp_path / "e.bin").write_bytes(b"")
    for name, lengths in (("none", []), ("blank", [0, 0, 0])):
        write_index(tmp_path / "e", np.uint16, lengths, [0] * len(lengths))
        m, how, reason = megatron.convert(tmp_path / "e", tmp_path / name)
        assert how == "copied" and reason == f"{tmp_path / 'e.bin'} holds no values"
        assert len(m) == len(lengths) and m.dtype == np.uint16 and all(m[i].size == 0 for i in range(len(m)))
        assert m.verify(deep=True) == []
    assert (tmp_path / "blank" / "data.ninja").stat().st_size == 1


def test_damaged_indexes_and_existing_maps_are_refused_leaving_nothing(tmp_path, capsys):
    samples = token_samples(50, seed=3)
    build_pair(tmp_path / "c", samples)
    raw = bytearray((tmp_path / "c.idx").read_bytes())
    raw[37] = 0x7f  # the high byte of the first length: far past the end of c.bin
    (tmp_path / "c.idx").write_bytes(bytes(raw))
    code, out, err = run(capsys, "convert", "--from", "megatron", tmp_path / "c", tmp_path / "out")
    assert code == 2 and out == "" and "c.idx: a sequence lies outside" in err
    (tmp_path / "c.idx").write_bytes(b"MMIDIDX\x00\x00" + b"\x01")
    code, _, err = run(capsys, "convert", "--from", "megatron", tmp_path / "c", tmp_path / "out")
    assert code == 2 and "not a Megatron index" in err
    code, _, err = run(capsys, "convert", "--from", "megatron", tmp_path / "nothing", tmp_path / "out")
    assert code == 2 and err == (f"mmap-ninja convert: error: no Megatron dataset at {tmp_path / 'nothing'}: "
                                 f"{tmp_path / 'nothing.bin'} and {tmp_path / 'nothing.idx'} missing\n")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    build_pair(tmp_path / "c", samples)
    RaggedMmap.from_lists(tmp_path / "out", [np.arange(3)])
    code, _, err = run(capsys, "convert", "--from", "megatron", tmp_path / "c", tmp_path / "out", "--quiet")
    assert code == 2 and err == (f"mmap-ninja convert: error: {tmp_path / 'out'} already holds a ragged map: "
                                 f"--force replaces it\n")
    assert_reads(RaggedMmap(tmp_path / "out"), [np.arange(3)])
    code, _, _ = run(capsys, "convert", "--from", "megatron", tmp_path / "c", tmp_path / "out", "--quiet", "--force")
    assert code == 0 and (tmp_path / "out" / "data.ninja").stat().st_ino == (tmp_path / "c.bin").stat().st_ino
    assert_reads(RaggedMmap(tmp_path / "out"), samples)
    for flags in (["--append"], ["--kind", "npy"], ["--zstd", "3"]):
        code, _, err = run(capsys, "convert", "--from", "megatron", tmp_path / "c", tmp_path / "x", *flags)
        assert code == 2 and "not for Megatron's indexed datasets" in err
    code, _, err = run(capsys, "convert", tmp_path / "c.bin", tmp_path / "x", "--copy")
    assert code == 2 and "--copy and --checksum go with --from megatron" in err
    assert not (tmp_path / "x").exists()


def test_maps_become_pairs_that_megatron_reads_identically_and_others_are_refused(tmp_path, capsys):
    samples = [sample.astype(np.uint16) for sample in token_samples(400, seed=4)]  # a vocabulary of 50,000
    RaggedMmap.from_lists(tmp_path / "m", samples)
    code, out, err = run(capsys, "convert", "--to", "megatron", tmp_path / "m", tmp_path / "corpus",
                         "--batch-size", 150)
    assert code == 0 and out == (f"wrote {tmp_path / 'corpus.bin'} and {tmp_path / 'corpus.idx'}: 400 sequences "
                                 f"of uint16\n") and "Exporting" in err
    theirs = IndexedDataset(str(tmp_path / "corpus"))
    assert len(theirs) == 400 and all(theirs[i].dtype == np.uint16 and np.array_equal(theirs[i], samples[i])
                                      for i in range(400))
    code, _, err = run(capsys, "convert", "--to", "megatron", tmp_path / "m", tmp_path / "corpus", "--quiet")
    assert code == 2 and "corpus.bin and" in err and "already exist: --force replaces them" in err
    code, _, err = run(capsys, "convert", "--to", "megatron", tmp_path / "m", tmp_path / "corpus.bin", "--quiet",
                       "--force")
    theirs = IndexedDataset(str(tmp_path / "corpus"))  # its views live only as long as it does
    assert code == 0 and err == "" and theirs[7].tolist() == samples[7].tolist()
    StringsMmap.from_strings(tmp_path / "s", ["a"])
    RaggedMmap.from_lists(tmp_path / "nd", [np.zeros((2, 3), np.int32)])
    RaggedMmap.from_lists(tmp_path / "wide", [np.zeros(3, np.uint64)])
    RaggedMmap.from_lists(tmp_path / "scalars", [np.int32(3), np.arange(2, dtype=np.int32)])
    refused = {"s": "holds a strings map: Megatron's indexed datasets are written from a ragged map",
               "nd": "Megatron's indexed datasets hold 1-d sequences", "wide": "not uint64",
               "scalars": "1-d sequences, not scalars", "missing": "no map at"}
    for name, message in refused.items():
        code, out, err = run(capsys, "convert", "--to", "megatron", tmp_path / name, tmp_path / "x", "--quiet")
        assert code == 2 and out == "" and message in err and err.count("\n") == 1, (name, err)
    for flag in ("--copy", "--checksum"):
        assert run(capsys, "convert", "--to", "megatron", tmp_path / "m", tmp_path / "x", flag)[0] == 2
    assert not list(tmp_path.glob("x*"))


def test_a_linked_map_opens_and_extends_in_0_9_0(tmp_path, ref090):
    samples = token_samples(200, seed=5)
    build_pair(tmp_path / "c", samples)
    megatron.to_ragged(tmp_path / "c", tmp_path / "m")
    assert (tmp_path / "m" / "data.ninja").stat().st_ino == (tmp_path / "c.bin").stat().st_ino
    result = ref090.run(f"""
import numpy as np
from mmap_ninja.ragged import RaggedMmap
m = RaggedMmap({str(tmp_path / 'm')!r})
first = [m[i].tolist() for i in range(len(m))]
m.extend([np.array([5, 6, 7], dtype=np.int32)])
result = [first, RaggedMmap({str(tmp_path / 'm')!r})[-1].tolist()]
""", tmp_path)
    assert result[0] == [sample.tolist() for sample in samples] and result[1] == [5, 6, 7]
    assert_reads(RaggedMmap(tmp_path / "m"), samples + [np.array([5, 6, 7], np.int32)])
    theirs = IndexedDataset(str(tmp_path / "c"))
    assert len(theirs) == 200 and all(np.array_equal(theirs[i], samples[i]) for i in range(200))
    report = RaggedMmap(tmp_path / "m").verify()
    assert report == [] and no_checksum_notes(report), report.notes


def test_a_clone_is_an_independent_file_where_the_file_system_makes_one(tmp_path):
    (tmp_path / "probe").write_bytes(b"x" * 4096)
    if not megatron._clone(tmp_path / "probe", tmp_path / "probe.clone"):
        pytest.skip(f"no copy-on-write clones (FICLONE) on the file system of {tmp_path}")
    samples = token_samples(300, seed=6)
    build_pair(tmp_path / "c", samples)
    size = (tmp_path / "c.bin").stat().st_size
    m, how, _ = megatron.convert(tmp_path / "c", tmp_path / "m")
    assert how == "cloned" and m.mode == "r+"
    assert (tmp_path / "m" / "data.ninja").stat().st_ino != (tmp_path / "c.bin").stat().st_ino
    m.extend([np.arange(9, dtype=np.int32)])
    assert (tmp_path / "c.bin").stat().st_size == size
    assert_reads(RaggedMmap(tmp_path / "m"), samples + [np.arange(9, dtype=np.int32)])


def test_a_conversion_cut_short_leaves_the_old_map_and_the_bin_as_they_were(tmp_path, monkeypatch):
    samples = token_samples(300, seed=7)
    build_pair(tmp_path / "c", samples)
    before = (tmp_path / "c.bin").read_bytes()
    RaggedMmap.from_lists(tmp_path / "m", [np.arange(4)])
    write_values = megatron._SequenceBatch.write_values

    def full_disk_at_the_second_batch(batch, data, commit):
        if batch.start:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_values(batch, data, commit)

    monkeypatch.setattr(megatron._SequenceBatch, "write_values", full_disk_at_the_second_batch)
    for out in ("m", "new"):
        with pytest.raises(OSError, match="No space left"):
            megatron.to_ragged(tmp_path / "c", tmp_path / out, batch_size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.idx", "m"]
    assert_reads(RaggedMmap(tmp_path / "m"), [np.arange(4)])
    assert (tmp_path / "c.bin").stat().st_nlink == 1 and (tmp_path / "c.bin").read_bytes() == before


# -- a data file shared with another path is never written ---------------------------------------


def folder_bytes(folder):
    """Every file under ``folder`` with its bytes (to show that a refused write wrote nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_maps_linked_to_one_bin_keep_their_own_samples_and_the_bin_its_bytes(tmp_path):
    samples = token_samples(400, seed=8)
    build_pair(tmp_path / "corpus", samples)
    before = (tmp_path / "corpus.bin").read_bytes()
    a = megatron.to_ragged(tmp_path / "corpus", tmp_path / "a")
    b = megatron.to_ragged(tmp_path / "corpus", tmp_path / "b")
    assert (tmp_path / "corpus.bin").stat().st_nlink == 3  # one file under three names
    mine, theirs_ = [np.arange(5, dtype=np.int32)], [np.full(5, -1, np.int32), np.arange(2, dtype=np.int32)]
    a.extend(mine)
    b.extend(theirs_)
    assert_reads(RaggedMmap(tmp_path / "a"), samples + mine)
    assert_reads(RaggedMmap(tmp_path / "b"), samples + theirs_)
    assert (tmp_path / "corpus.bin").read_bytes() == before and (tmp_path / "corpus.bin").stat().st_nlink == 1
    for name in ("a", "b"):
        assert (tmp_path / name / "data.ninja").stat().st_nlink == 1
        assert RaggedMmap(tmp_path / name).verify(deep=True) == []
    c = megatron.to_ragged(tmp_path / "corpus", tmp_path / "c")
    c = RaggedMmap(tmp_path / "c", mode="r+")
    c[3] = np.zeros(len(samples[3]), np.int32)  # a new version of the map: not written into corpus.bin
    assert (tmp_path / "corpus.bin").read_bytes() == before and (tmp_path / "corpus.bin").stat().st_nlink == 1
    assert_reads(RaggedMmap(tmp_path / "c"), samples[:3] + [np.zeros(len(samples[3]), np.int32)] + samples[4:])
    megatrons = IndexedDataset(str(tmp_path / "corpus"))
    assert len(megatrons) == len(samples)
    assert all(np.array_equal(megatrons[i], samples[i]) for i in range(len(samples)))


def test_a_bin_rewritten_by_megatrons_builder_after_the_link_is_never_written_by_the_map(tmp_path):
    samples = token_samples(300, seed=9)
    build_pair(tmp_path / "c", samples)
    m = megatron.to_ragged(tmp_path / "c", tmp_path / "m")
    assert (tmp_path / "m" / "data.ninja").samefile(tmp_path / "c.bin")
    longer = token_samples(600, seed=10)
    build_pair(tmp_path / "c", longer)  # opens c.bin with "wb": the shared file is emptied and written anew
    theirs = (tmp_path / "c.bin").read_bytes()
    assert (tmp_path / "m" / "data.ninja").samefile(tmp_path / "c.bin")
    m.extend([np.arange(3, dtype=np.int32)])
    assert (tmp_path / "c.bin").read_bytes() == theirs and (tmp_path / "c.bin").stat().st_nlink == 1
    grown = RaggedMmap(tmp_path / "m")
    assert len(grown) == len(samples) + 1 and grown[-1].tolist() == [0, 1, 2]
    megatrons = IndexedDataset(str(tmp_path / "c"))
    assert len(megatrons) == len(longer) and all(np.array_equal(megatrons[i], longer[i]) for i in range(600))
    # rewritten shorter than what the map had committed: every write is refused, writing nothing
    m2 = megatron.to_ragged(tmp_path / "c", tmp_path / "m2")
    build_pair(tmp_path / "c", samples[:20])
    theirs, kept = (tmp_path / "c.bin").read_bytes(), folder_bytes(tmp_path / "m2")
    data = tmp_path / "m2" / "data.ninja"
    with pytest.raises(ValueError, match=f"{data}: holds {len(theirs)} bytes") as refused:
        m2.extend([np.arange(3, dtype=np.int32)])
    assert "to_ragged" in str(refused.value) and "link=False" in str(refused.value)
    with pytest.raises(ValueError, match=f"{data}: holds {len(theirs)} bytes"):
        RaggedMmap(tmp_path / "m2", mode="r+")[0] = np.zeros(len(longer[0]), np.int32)
    assert (tmp_path / "c.bin").read_bytes() == theirs and folder_bytes(tmp_path / "m2") == kept
    assert "data.ninja: holds" in RaggedMmap.verify(m2)[0]


@pytest.mark.parametrize("kind", ["ragged", "strings", "numpy"])
def test_a_map_whose_files_are_hard_linked_by_hand_is_not_written_through(tmp_path, kind):
    from mmap_ninja import numpy as np_ninja

    out = tmp_path / "m"
    if kind == "ragged":
        RaggedMmap.from_lists(out, [np.arange(4, dtype=np.int16), np.arange(2, dtype=np.int16)])
    elif kind == "strings":
        StringsMmap.from_strings(out, ["ab", "cde"])
    else:
        np_ninja.from_ndarray(out, np.arange(6, dtype=np.int64).reshape(3, 2))
    # a second map of the same files, all hard-linked (as cp -al makes it)
    twin = tmp_path / "twin"
    for path in sorted(out.rglob("*")):
        target = twin / path.relative_to(out)
        if path.is_dir():
            target.mkdir(parents=True)
        elif path.name != "writer.lock":
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    os.link(out / "data.ninja", tmp_path / "other")
    other, twins = (tmp_path / "other").read_bytes(), folder_bytes(twin)
    if kind == "ragged":
        m = RaggedMmap(out, mode="r+")
        m.extend([np.array([7, 7], np.int16)])
        m[0] = np.array([9, 9, 9, 9], np.int16)
        expected = [[9, 9, 9, 9], [0, 1], [7, 7]]
        RaggedMmap(twin).extend([np.array([5], np.int16)])
        assert [s.tolist() for s in RaggedMmap(out)] == expected
        assert [s.tolist() for s in RaggedMmap(twin)] == [[0, 1, 2, 3], [0, 1], [5]]
    elif kind == "strings":
        m = StringsMmap(out)
        m.append("fg")
        m[1] = "xyz"
        StringsMmap(twin).append("h")
        assert list(StringsMmap(out)) == ["ab", "xyz", "fg"] and list(StringsMmap(twin)) == ["ab", "cde", "h"]
    else:
        np_ninja.extend_dir(out, np.array([[6, 7]], np.int64))
        assert np_ninja.open_existing(out).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
        assert np_ninja.open_existing(twin).tolist() == [[0, 1], [2, 3], [4, 5]]
    # other still shares its file with the twin map when that was not written
    assert (tmp_path / "other").read_bytes() == other and (tmp_path / "other").stat().st_nlink == (
        2 if kind == "numpy" else 1)
    if kind == "numpy":  # the twin map was not written
        assert folder_bytes(twin) == twins
    assert (out / "data.ninja").stat().st_nlink == 1
    for folder in (out, twin):  # each map's checksums are its own
        report = np_ninja.verify(folder, deep=True) if kind == "numpy" else type(m)(folder).verify(deep=True)
        assert report == [] and report.notes == [], folder


def test_a_data_file_shortened_through_another_name_refuses_writes_writing_nothing(tmp_path):
    m = StringsMmap.from_strings(tmp_path / "s", ["abc", "de"])
    os.link(tmp_path / "s" / "data.ninja", tmp_path / "other")
    os.truncate(tmp_path / "other", 2)
    kept = folder_bytes(tmp_path / "s")
    with pytest.raises(ValueError, match=f"{tmp_path / 's' / 'data.ninja'}: holds 2 bytes"):
        m.append("f")
    with pytest.raises(ValueError, match=f"{tmp_path / 's' / 'data.ninja'}: holds 2 bytes"):
        m[0] = "xyz"
    assert folder_bytes(tmp_path / "s") == kept and (tmp_path / "other").read_bytes() == b"ab"


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_writer_killed_while_making_its_copy_leaves_the_map_and_the_bin_as_they_were(tmp_path, moment):
    import subprocess
    import sys

    samples = token_samples(200, seed=11)
    build_pair(tmp_path / "c", samples)
    before = (tmp_path / "c.bin").read_bytes()
    megatron.to_ragged(tmp_path / "c", tmp_path / "m")
    script = f"""
import os
import numpy as np
from mmap_ninja.ragged import RaggedMmap
replace = os.replace
def dying(source, target, *args, **kwargs):
    if os.path.basename(target) == "data.ninja":
        if {moment!r} == "after":
            replace(source, target, *args, **kwargs)
        os._exit(9)
    return replace(source, target, *args, **kwargs)
os.replace = dying
RaggedMmap({str(tmp_path / 'm')!r}).extend([np.arange(4, dtype=np.int32)])
"""
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert (tmp_path / "c.bin").read_bytes() == before
    assert (tmp_path / "m" / "data.ninja").samefile(tmp_path / "c.bin") == (moment == "before")
    assert_reads(RaggedMmap(tmp_path / "m"), samples)
    RaggedMmap(tmp_path / "m").extend([np.arange(4, dtype=np.int32)])
    assert_reads(RaggedMmap(tmp_path / "m"), samples + [np.arange(4, dtype=np.int32)])
    assert (tmp_path / "c.bin").read_bytes() == before and (tmp_path / "c.bin").stat().st_nlink == 1
    assert RaggedMmap(tmp_path / "m").verify(deep=True) == []
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")) == []


def test_an_index_whose_pointer_plus_size_overflows_int64_is_refused_naming_it(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(5, dtype=np.int32), np.arange(3, dtype=np.int32)])
    megatron.export(m, tmp_path / "c")
    raw = bytearray((tmp_path / "c.idx").read_bytes())
    fixed = len(megatron.HEADER) + 8 + 1 + 8 + 8
    assert struct.unpack_from("<2q", raw, fixed + 2 * 4) == (0, 20)  # the pointers of the two sequences
    struct.pack_into("<q", raw, fixed + 2 * 4 + 8, 2 ** 63 - 8)  # 3 int32 from here end past 2**63 - 1
    (tmp_path / "c.idx").write_bytes(bytes(raw))
    for call in (lambda: megatron.read_index(tmp_path / "c"),
                 lambda: megatron.to_ragged(tmp_path / "c", tmp_path / "o")):
        with pytest.raises(ValueError, match=f"{tmp_path / 'c.idx'}: sequence 1 .* overflow int64"):
            call()
    assert not (tmp_path / "o").exists()


def test_a_new_version_of_a_map_shares_its_data_file_by_its_own_link_without_a_copy(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(4, dtype=np.int16), np.arange(2, dtype=np.int16)],
                              mode="r+")
    inode = (tmp_path / "m" / "data.ninja").stat().st_ino
    m[0] = np.full(4, 9, np.int16)  # built aside with hard links to the map's files: those are not copied
    assert (tmp_path / "m" / "data.ninja").stat().st_ino == inode
    assert [s.tolist() for s in RaggedMmap(tmp_path / "m")] == [[9, 9, 9, 9], [0, 1]]


def test_a_reader_opening_the_map_while_a_writer_makes_its_copy_reads_it_whole(tmp_path, monkeypatch):
    samples = token_samples(100, seed=12)
    build_pair(tmp_path / "c", samples)
    megatron.to_ragged(tmp_path / "c", tmp_path / "m")
    mapping = _storage.ArrayDir.map
    copied = []

    def copy_first(array, mode="r", **options):  # a writer makes its private copy just as this reader maps the file
        if array.data_file == tmp_path / "m" / "data.ninja" and not copied:
            copied.append(_storage.make_private(array.data_file, durable=False))
        return mapping(array, mode, **options)

    monkeypatch.setattr(_storage.ArrayDir, "map", copy_first)
    assert_reads(RaggedMmap(tmp_path / "m"), samples)
    assert copied and not (tmp_path / "m" / "data.ninja").samefile(tmp_path / "c.bin")
