"""Build of the compiled modules (the rest is in pyproject.toml): mmap_ninja._core (the
kernels over mapped data), mmap_ninja._sharded (its readers over the parts of a sharded map,
sharing _core.pxd), mmap_ninja._build (the kernels that pack and write the samples of ragged
maps), mmap_ninja._keyindex (the hash table of the keys of a map's samples) and
mmap_ninja._mapping (mappings and directory exchange)."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "mmap_ninja._core",
        ["mmap_ninja/_core.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "mmap_ninja._sharded",
        ["mmap_ninja/_sharded.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "mmap_ninja._build",
        ["mmap_ninja/_build.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "mmap_ninja._keyindex",
        ["mmap_ninja/_keyindex.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension("mmap_ninja._mapping", ["mmap_ninja/_mapping.pyx"]),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
