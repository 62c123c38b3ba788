"""Build of the compiled core, mmap_ninja._core (the rest is in pyproject.toml)."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extension = Extension(
    "mmap_ninja._core",
    ["mmap_ninja/_core.pyx"],
    include_dirs=[numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(ext_modules=cythonize([extension], compiler_directives={"language_level": "3"}))
