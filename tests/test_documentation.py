"""Runs every code example of mmap_ninja's user documentation (the API tour, the documentation
front page in its two renderings, the Python API notes and the README) against this library.

Each test names the document and section it comes from. Paths and data are small local stand-ins
(a few tiny PNG files instead of COCO, a list of short texts instead of 20newsgroups, small
arrays instead of 200 images); the library calls are the ones the examples make, with the same
arguments.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import assert_sample_equal  # noqa: E402

# --------------------------------------------------------------------------------------------
# Local stand-ins for the documents' data
# --------------------------------------------------------------------------------------------


def write_pngs(folder: Path, shapes) -> Path:
    """Write one small PNG per ``(height, width)`` in ``shapes`` into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, (height, width) in enumerate(shapes):
        plt.imsave(folder / f"img_{k:03d}.png", rng.random((height, width, 3)))
    return folder


# Images of different shapes, like the COCO validation set (at least 6, for images[5]).
RAGGED_SHAPES = [(5 + k, 7 + 2 * k) for k in range(8)]


def read_images(folder: Path, imread=plt.imread):
    """What the examples' ``map(imread, folder.iterdir())`` yields, in the same order."""
    return [imread(path) for path in folder.iterdir()]


def assert_progress_bar(err: str, count: int) -> None:
    """A tqdm bar was written to stderr and reached ``count`` samples."""
    assert "samples/s" in err or "it/s" in err, f"no progress bar on stderr: {err!r}"
    # "8/8" when the total is known (tqdm's "100%|...| 8/8"), "8 samples" for a generator
    assert f"{count}/{count}" in err or f" {count} samples" in err, (
        f"the progress bar does not reach {count} samples: {err!r}")


def generate_texts(n: int):
    """Stand-in for ``fetch_20newsgroups()['data']``: ``n`` short newsgroup-like posts,
    including non-ASCII text and empty lines."""
    topics = ["graphics", "space", "hockey", "crypt", "électronique", "медицина"]
    return [
        f"From: user{i}@example.org\nSubject: Re: {topics[i % len(topics)]} #{i}\n\n"
        + "Lorem ipsum dolor sit amet. " * (i % 5)
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------
# 000: the full API tour — Utils API
# --------------------------------------------------------------------------------------------


def test_000_wrapped(capsys):
    """000, "Wrapped": a Wrapped list applies torch.tensor on __getitem__."""
    from mmap_ninja.base import Wrapped

    # The document writes np.array([1, 2, 3], np.array([-1, 10])): meant as a list of two arrays.
    dataset = [np.array([1, 2, 3]), np.array([-1, 10])]
    wrapped = Wrapped(dataset, wrapper_fn=torch.tensor)

    # The document prints wrapped[14], which the 2-sample list does not have: use index 1.
    print(wrapped[1])

    assert capsys.readouterr().out == "tensor([-1, 10])\n"
    assert len(wrapped) == 2
    for k, expected in enumerate(dataset):
        assert isinstance(wrapped[k], torch.Tensor)
        np.testing.assert_array_equal(wrapped[k].numpy(), expected)
    # The wrapper is applied lazily: a change to the data shows up at the next lookup.
    dataset[0][0] = 100
    np.testing.assert_array_equal(wrapped[0].numpy(), [100, 2, 3])


# --------------------------------------------------------------------------------------------
# 000: Numpy API
# --------------------------------------------------------------------------------------------


def test_000_create_numpy_memmap_from_ndarray(tmp_path, monkeypatch):
    """000, "Create a Numpy memmap from a Numpy array"."""
    from mmap_ninja import numpy as np_ninja

    monkeypatch.chdir(tmp_path)
    arr = np.random.randn(5, 8, 6, 3)  # the document uses (200, 224, 224, 3)
    memmap = np_ninja.from_ndarray('imgs_mmap', arr)

    assert isinstance(memmap, np.memmap)
    assert memmap.shape == arr.shape and memmap.dtype == arr.dtype
    np.testing.assert_array_equal(memmap, arr)
    reopened = np_ninja.open_existing('imgs_mmap')
    assert isinstance(reopened, np.memmap)
    assert reopened.shape == arr.shape and reopened.dtype == np.float64
    np.testing.assert_array_equal(reopened, arr)


def test_000_create_numpy_memmap_from_generator(tmp_path, monkeypatch):
    """000, "Create a Numpy memmap from a generator": same-shaped images read with mpimg."""
    from os import listdir  # noqa: F401  (imported by the example)

    from mmap_ninja import numpy as np_ninja

    monkeypatch.chdir(tmp_path)
    # 40 images of one shape, so that batch_size=32 writes two batches.
    write_pngs(tmp_path / 'path_to_img_dir', [(6, 9)] * 40)
    imgs_dir = Path('./path_to_img_dir')

    memmap = np_ninja.from_generator(
        out_dir='imgs_mmap',
        sample_generator=map(mpimg.imread, imgs_dir.iterdir()),
        batch_size=32,
    )

    expected = np.stack(read_images(imgs_dir, mpimg.imread))
    assert expected.shape == (40, 6, 9, 4)  # matplotlib writes RGBA PNGs, read as float32
    assert isinstance(memmap, np.memmap)
    assert memmap.shape == expected.shape and memmap.dtype == np.float32
    np.testing.assert_array_equal(memmap, expected)
    reopened = np_ninja.open_existing('imgs_mmap')
    assert reopened.shape == expected.shape
    np.testing.assert_array_equal(reopened, expected)


def test_000_append_new_samples_to_numpy_memmap(tmp_path, monkeypatch):
    """000, "Append new samples to a Numpy memmap": extend and extend_dir."""
    from mmap_ninja import numpy as np_ninja

    monkeypatch.chdir(tmp_path)
    arr = np.arange(3)
    memmap = np_ninja.from_ndarray("growable", arr)
    np_ninja.extend(memmap, np.arange(11, 13))
    np_ninja.extend_dir("growable", np.arange(14, 16))

    assert memmap.shape == (3,)  # extend leaves the passed memmap as it was
    np.testing.assert_array_equal(memmap, [0, 1, 2])
    grown = np_ninja.open_existing("growable")
    assert grown.dtype == arr.dtype
    np.testing.assert_array_equal(grown, [0, 1, 2, 11, 12, 14, 15])


def test_000_open_existing_numpy_memmap(tmp_path, monkeypatch):
    """000, "Open an existing Numpy memmap": opens the "growable" map built by the section
    "Append new samples to a Numpy memmap"."""
    from mmap_ninja import numpy as np_ninja

    monkeypatch.chdir(tmp_path)
    memmap = np_ninja.from_ndarray("growable", np.arange(3))
    np_ninja.extend(memmap, np.arange(11, 13))
    np_ninja.extend_dir("growable", np.arange(14, 16))

    memmap = np_ninja.open_existing("growable")

    assert isinstance(memmap, np.memmap)
    assert memmap.shape == (7,) and memmap.dtype == np.arange(3).dtype
    np.testing.assert_array_equal(memmap, [0, 1, 2, 11, 12, 14, 15])
    # "you can do all the usual numpy operations on the np.memmap"
    assert memmap.sum() == 55
    np.testing.assert_array_equal(memmap[memmap > 10] - 10, [1, 2, 4, 5])


# --------------------------------------------------------------------------------------------
# 000: Ragged API
# --------------------------------------------------------------------------------------------


def test_000_create_raggedmmap_from_list_of_samples(tmp_path, monkeypatch):
    """000, "Create a RaggedMmap from list of samples"."""
    from mmap_ninja.ragged import RaggedMmap

    monkeypatch.chdir(tmp_path)
    simple = [np.array([11, 13, -1, 17]), np.array([2, 3, 4, 19]), np.array([90, 12])]
    mmap = RaggedMmap.from_lists("simple", simple)

    reopened = RaggedMmap("simple")
    for opened in (mmap, reopened):
        assert isinstance(opened, RaggedMmap)
        assert len(opened) == 3
        for k, sample in enumerate(simple):
            assert isinstance(opened[k], np.ndarray)
            assert_sample_equal(opened[k], sample)


def build_val_images(img_dir: Path):
    """000, "Create a RaggedMmap from a generator", as the document writes it (run from a
    folder where 'val_images' is created; ``img_dir`` replaces '<PATH TO IMAGE DATASET>')."""
    from mmap_ninja.ragged import RaggedMmap

    img_path = Path(img_dir)
    val_images = RaggedMmap.from_generator(
        out_dir='val_images',
        sample_generator=map(plt.imread, img_path.iterdir()),
        batch_size=1024,
        verbose=True
    )
    return val_images


def test_000_create_raggedmmap_from_generator(tmp_path, monkeypatch, capsys):
    """000, "Create a RaggedMmap from a generator": images of different shapes."""
    from mmap_ninja.ragged import RaggedMmap

    monkeypatch.chdir(tmp_path)
    img_dir = write_pngs(tmp_path / "images", RAGGED_SHAPES)

    val_images = build_val_images(img_dir)

    assert_progress_bar(capsys.readouterr().err, len(RAGGED_SHAPES))
    expected = read_images(img_dir)
    assert isinstance(val_images, RaggedMmap)
    assert len(val_images) == len(expected)
    assert len({sample.shape for sample in expected}) == len(expected)  # all shapes differ
    for k, image in enumerate(expected):
        assert_sample_equal(val_images[k], image)
    assert (tmp_path / 'val_images').is_dir()


def test_000_open_existing_raggedmmap(tmp_path, monkeypatch):
    """000, "Open an existing RaggedMmap" (first example): opens the 'val_images' map built by
    "Create a RaggedMmap from a generator"."""
    monkeypatch.chdir(tmp_path)
    img_dir = write_pngs(tmp_path / "images", RAGGED_SHAPES)
    build_val_images(img_dir)

    from mmap_ninja.ragged import RaggedMmap

    images = RaggedMmap('val_images')
    # The document writes isinstance(np.ndarray, images[4]): the arguments are swapped.
    assert isinstance(images[4], np.ndarray)
    # len(images) now returns the number of samples
    # images[5] is now a numpy array representing the 5-th sample

    expected = read_images(img_dir)
    assert len(images) == len(expected)
    assert isinstance(images[5], np.ndarray)
    assert_sample_equal(images[5], expected[5])
    for k, image in enumerate(expected):
        assert_sample_equal(images[k], image)
    assert not images[4].flags.writeable  # RaggedMmap(dir) opens read-only views


def test_000_open_existing_raggedmmap_with_wrapper_fn(tmp_path, monkeypatch):
    """000, "Open an existing RaggedMmap" (second example): wrapper_fn=torch.tensor."""
    monkeypatch.chdir(tmp_path)
    img_dir = write_pngs(tmp_path / "images", RAGGED_SHAPES)
    build_val_images(img_dir)

    from mmap_ninja.ragged import RaggedMmap

    images = RaggedMmap('val_images', wrapper_fn=torch.tensor)
    # The document writes isinstance(torch.Tensor, images[4]): the arguments are swapped.
    assert isinstance(images[4], torch.Tensor)

    expected = read_images(img_dir)
    assert len(images) == len(expected)
    for k, image in enumerate(expected):
        sample = images[k]
        assert isinstance(sample, torch.Tensor)
        assert sample.dtype == torch.float32
        np.testing.assert_array_equal(sample.numpy(), image)
    # Slices go through the wrapper too.
    assert all(isinstance(sample, torch.Tensor) for sample in images[2:4])


def test_000_append_new_samples_to_raggedmmap(tmp_path, monkeypatch):
    """000, "Append new samples to a RaggedMmap": extend a 'samples' map built beforehand;
    append is tested too, as the section describes it."""
    from mmap_ninja.ragged import RaggedMmap

    monkeypatch.chdir(tmp_path)
    existing = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    RaggedMmap.from_lists('samples', existing)

    mmap = RaggedMmap('samples')
    new_samples = [np.array([123, -1]), np.array([-1, 0, 123, 92, 12])]
    mmap.extend(new_samples)

    everything = existing + new_samples
    for opened in (mmap, RaggedMmap('samples')):
        assert len(opened) == 5
        for k, sample in enumerate(everything):
            assert_sample_equal(opened[k], sample)

    mmap.append(np.array([7, 8, 9, 10]))
    reopened = RaggedMmap('samples')
    assert len(mmap) == len(reopened) == 6
    assert_sample_equal(reopened[5], np.array([7, 8, 9, 10]))
    assert_sample_equal(reopened[4], new_samples[1])


# --------------------------------------------------------------------------------------------
# 000: String API
# --------------------------------------------------------------------------------------------


def test_000_create_stringsmmap_from_list_of_strings(tmp_path, monkeypatch, capsys):
    """000, "Create a StringsMmap from list of strings"."""
    from mmap_ninja.string import StringsMmap

    monkeypatch.chdir(tmp_path)
    list_of_strings = ["foo", "bar", "bidon", "zele", "slanina"]

    memmap = StringsMmap.from_strings("strings_memmap", list_of_strings, verbose=True)

    assert_progress_bar(capsys.readouterr().err, 5)
    for opened in (memmap, StringsMmap("strings_memmap")):
        assert isinstance(opened, StringsMmap)
        assert len(opened) == 5
        assert [opened[k] for k in range(5)] == list_of_strings
        assert all(type(opened[k]) is str for k in range(5))


def generate_strs(n):
    for i in range(n):
        yield str(i)


N_STRS = 3000  # the document uses 1_000_000_000; 3000 still spans several batches of 1024


def build_strings_mmap():
    """000, "Create a StringsMmap from a string generator", as the document writes it (run from a
    folder where 'strings_mmap' is created)."""
    from mmap_ninja.string import StringsMmap

    memmap = StringsMmap.from_generator(
        out_dir="strings_mmap",
        sample_generator=generate_strs(N_STRS),
        batch_size=1024,
        verbose=True
    )
    return memmap


def test_000_create_stringsmmap_from_string_generator(tmp_path, monkeypatch, capsys):
    """000, "Create a StringsMmap from a string generator"."""
    from mmap_ninja.string import StringsMmap

    monkeypatch.chdir(tmp_path)
    memmap = build_strings_mmap()

    assert_progress_bar(capsys.readouterr().err, N_STRS)
    assert isinstance(memmap, StringsMmap)
    assert len(memmap) == N_STRS
    assert list(memmap) == [str(i) for i in range(N_STRS)]
    assert memmap[1023] == "1023" and memmap[1024] == "1024" and memmap[-1] == str(N_STRS - 1)


def test_000_open_existing_stringsmmap(tmp_path, monkeypatch):
    """000, "Open an existing StringsMmap": opens the 'strings_mmap' map built by "Create a
    StringsMmap from a string generator"."""
    monkeypatch.chdir(tmp_path)
    build_strings_mmap()

    from mmap_ninja.string import StringsMmap

    memmap = StringsMmap('strings_mmap')

    # "memmap[5] is a str"
    assert type(memmap[5]) is str
    assert memmap[5] == "5"
    assert len(memmap) == N_STRS
    assert memmap[N_STRS - 1] == str(N_STRS - 1)


def test_000_append_new_samples_to_stringsmmap(tmp_path, monkeypatch):
    """000, "Append new samples to a StringsMmap": extend the 'strings_mmap' map built
    beforehand; append is tested too, as the section describes it."""
    monkeypatch.chdir(tmp_path)
    build_strings_mmap()

    from mmap_ninja.string import StringsMmap

    mmap = StringsMmap('strings_mmap')
    new_samples = ['foo', 'bar']
    mmap.extend(new_samples)

    for opened in (mmap, StringsMmap('strings_mmap')):
        assert len(opened) == N_STRS + 2
        assert opened[N_STRS:] == ['foo', 'bar']
        assert opened[N_STRS - 1] == str(N_STRS - 1)
        assert opened[0] == "0"

    mmap.append('baz')
    reopened = StringsMmap('strings_mmap')
    assert len(mmap) == len(reopened) == N_STRS + 3
    assert reopened[-1] == 'baz' and mmap[-1] == 'baz'


# --------------------------------------------------------------------------------------------
# 001 and 004: the documentation front page (004 is a re-rendering of 001)
# --------------------------------------------------------------------------------------------


def test_001_004_samples_of_different_shape(tmp_path, monkeypatch, capsys):
    """001 and 004, "Samples of different shape": RaggedMmap.from_generator on a sequence of
    numpy arrays, then opening the map and printing a sample."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    # "sample_generator is a sequence of numpy arrays" of different shapes (and ranks)
    sample_generator = [rng.standard_normal(shape) for shape in [(3,), (2, 5), (4, 1, 2), (7,), (1, 6)]]
    out_path = 'ragged_out'  # the page's '<OUTPUT PATH>'

    from pathlib import Path  # noqa: F401,F811  (imported by the example)

    from mmap_ninja.ragged import RaggedMmap

    val_images = RaggedMmap.from_generator(
        out_dir=out_path,
        sample_generator=sample_generator,
        batch_size=1024,
        verbose=True
    )
    assert_progress_bar(capsys.readouterr().err, len(sample_generator))
    assert len(val_images) == len(sample_generator)

    from mmap_ninja.ragged import RaggedMmap

    val_images = RaggedMmap(out_path)
    print(val_images[3])  # Prints the ndarray

    assert capsys.readouterr().out == f"{sample_generator[3]}\n"
    assert isinstance(val_images[3], np.ndarray)
    assert len(val_images) == len(sample_generator)
    for k, sample in enumerate(sample_generator):
        assert_sample_equal(val_images[k], sample)


def generate_texts_gen(n: int = 150):
    """001/004's ``generate_strs()`` (called without arguments): yields the texts that the
    page then opens as '20newsgroups'."""
    yield from generate_texts(n)


def test_001_004_string_samples(tmp_path, monkeypatch, capsys):
    """001 and 004, "String samples": StringsMmap.from_generator with batch_size=4, then
    opening '20newsgroups' and printing texts[123]. The '<OUTPUT PATH>' of the first example is
    the '20newsgroups' map that the second one opens."""
    monkeypatch.chdir(tmp_path)
    generate_strs = generate_texts_gen  # noqa: F811  (the page's generate_strs())
    expected = generate_texts(150)

    from mmap_ninja.string import StringsMmap

    memmap = StringsMmap.from_generator(
        out_dir='20newsgroups',
        sample_generator=generate_strs(),
        batch_size=4,
        verbose=True
    )
    assert_progress_bar(capsys.readouterr().err, len(expected))
    assert len(memmap) == len(expected)

    from mmap_ninja.string import StringsMmap

    texts = StringsMmap('20newsgroups')
    print(texts[123])  # Prints the 123-th text

    assert capsys.readouterr().out == expected[123] + "\n"
    assert type(texts[123]) is str
    assert list(texts) == expected


def simple_gen():
    for i in range(30):
        yield np.ones((12, 12)) * i


def test_001_004_samples_of_the_same_shape(tmp_path, capsys):
    """001 and 004, "Samples of the same shape": np_ninja.from_generator with n=30, then
    np_ninja.open_existing(tmp_path / 'growable') and printing memmap[123] (the 'growable' map
    is built first, with at least 124 samples)."""
    from mmap_ninja import numpy as np_ninja

    memmap = np_ninja.from_generator(
        out_dir=tmp_path / 'generator',
        sample_generator=simple_gen(),
        batch_size=4,
        n=30,
        verbose=True
    )

    assert_progress_bar(capsys.readouterr().err, 30)
    assert isinstance(memmap, np.memmap)
    assert memmap.shape == (30, 12, 12) and memmap.dtype == np.float64
    for i in range(30):
        np.testing.assert_array_equal(memmap[i], np.ones((12, 12)) * i)
    reopened = np_ninja.open_existing(tmp_path / 'generator')
    assert reopened.shape == (30, 12, 12)
    np.testing.assert_array_equal(reopened, np.stack(list(simple_gen())))

    # The 'growable' map the second example opens: 3 samples, extended to 130.
    rows = np.arange(130 * 4).reshape(130, 4)
    grown = np_ninja.from_ndarray(tmp_path / 'growable', rows[:3])
    np_ninja.extend(grown, rows[3:])

    from mmap_ninja import numpy as np_ninja  # noqa: F811

    memmap = np_ninja.open_existing(tmp_path / 'growable')
    print(memmap[123])  # Prints the 123-th sample

    assert capsys.readouterr().out == f"{rows[123]}\n"
    assert isinstance(memmap, np.memmap)
    assert memmap.shape == rows.shape
    np.testing.assert_array_equal(memmap[123], rows[123])
    np.testing.assert_array_equal(memmap, rows)


# --------------------------------------------------------------------------------------------
# 002: the Python API notes — Memory mapping text documents
# --------------------------------------------------------------------------------------------


def test_002_memory_mapping_text_documents(tmp_path, monkeypatch, capsys):
    """002, "Memory mapping text documents": StringsMmmap.from_strings of the 20newsgroups
    texts (a local list of texts here, as sklearn cannot download), then opening it with
    StringsMmmap and printing texts[123]; then .extend, which the section mentions."""
    monkeypatch.chdir(tmp_path)
    from mmap_ninja.string import StringsMmap, StringsMmmap

    data = {'data': generate_texts(130)}  # stands for fetch_20newsgroups()
    memmap = StringsMmmap.from_strings('20newsgroups', data['data'], verbose=True)

    assert_progress_bar(capsys.readouterr().err, 130)
    assert StringsMmmap is StringsMmap
    assert isinstance(memmap, StringsMmap)
    assert len(memmap) == 130

    from mmap_ninja.string import StringsMmmap
    texts = StringsMmmap('20newsgroups')
    print(texts[123])  # Prints the 123-th text

    assert capsys.readouterr().out == data['data'][123] + "\n"
    assert list(texts) == data['data']

    # "You can also extend an already existing memory map easily by using the .extend method."
    texts.extend(["one more post", "and another, ünïcödé"])
    assert len(StringsMmmap('20newsgroups')) == 132
    assert StringsMmmap('20newsgroups')[130:] == ["one more post", "and another, ünïcödé"]


def test_002_003_raggedmmmap_class_methods(tmp_path, monkeypatch):
    """002 and 003, "Memory mapping images with different shapes" (prose): RaggedMmmap's class
    methods RaggedMmmap.from_lists and RaggedMmap.from_generator."""
    from mmap_ninja.ragged import RaggedMmap, RaggedMmmap

    monkeypatch.chdir(tmp_path)
    samples = [np.arange(4), np.arange(6).reshape(2, 3), np.array([7])]
    from_lists = RaggedMmmap.from_lists('from_lists', samples)
    from_generator = RaggedMmap.from_generator('from_generator', iter(samples), batch_size=2)

    assert RaggedMmmap is RaggedMmap
    for opened in (from_lists, from_generator, RaggedMmmap('from_lists'), RaggedMmmap('from_generator')):
        assert len(opened) == 3
        assert opened.dtype == samples[0].dtype  # the first sample's dtype
        for k, sample in enumerate(samples):
            assert_sample_equal(opened[k], sample)


# --------------------------------------------------------------------------------------------
# 002 and 003: Memory mapping images with different shapes (003, the README, repeats 002)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["002", "003"])
def test_002_003_memory_mapping_images_with_different_shapes(tmp_path, monkeypatch, capsys, source):
    """002 and 003, "Memory mapping images with different shapes": RaggedMmap.from_generator
    with positional arguments over the COCO images (a few PNGs here), then opening the map and
    printing sample 3 (named training_images in 002, val_images in 003); then .extend, which
    the section mentions."""
    monkeypatch.chdir(tmp_path)
    coco_dir = write_pngs(tmp_path / "coco" / "val2017", RAGGED_SHAPES)

    from pathlib import Path  # noqa: F811

    import matplotlib.pyplot as plt  # noqa: F811

    from mmap_ninja.ragged import RaggedMmap

    coco_path = Path(coco_dir)  # '/home/hvrigazov/data/coco/val2017' in the document
    val_images = RaggedMmap.from_generator('val_images',
                                           map(plt.imread, coco_path.iterdir()),
                                           batch_size=1024,
                                           verbose=True)

    expected = read_images(coco_path)
    assert_progress_bar(capsys.readouterr().err, len(expected))
    assert len(val_images) == len(expected)

    from mmap_ninja.ragged import RaggedMmap

    if source == "002":
        training_images = RaggedMmap('val_images')
        print(training_images[3])  # Prints the ndarray image, e.g. with shape (387, 640, 3)
        opened = training_images
    else:
        val_images = RaggedMmap('val_images')
        print(val_images[3])  # Prints the ndarray image, e.g. with shape (387, 640, 3)
        opened = val_images

    assert capsys.readouterr().out == f"{expected[3]}\n"
    assert isinstance(opened[3], np.ndarray)
    assert opened[3].shape == (*RAGGED_SHAPES[3], 4)  # RGBA, as matplotlib writes PNGs
    for k, image in enumerate(expected):
        assert_sample_equal(opened[k], image)

    # "You can also extend an already existing memory map easily by using the .extend method."
    more = read_images(write_pngs(tmp_path / "more", [(3, 3), (20, 2)]))
    opened.extend(more)
    reopened = RaggedMmap('val_images')
    assert len(opened) == len(reopened) == len(expected) + 2
    for k, image in enumerate(expected + more):
        assert_sample_equal(reopened[k], image)
