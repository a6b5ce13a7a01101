"""Build the Cython kernels of fastnn.

Metadata lives in pyproject.toml; this file only lists the extensions.
Set FASTNN_DEBUG_CHECKS=1 to compile the kernels with bounds, wraparound and
initialization checks turned on (the test suite must pass in that build too).
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTNN_DEBUG_CHECKS", "0") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

if sys.platform == "win32":
    compile_args = ["/O2"]
else:
    # no FMA contraction: the kernels round exactly as written (and as the reference)
    compile_args = ["-O3", "-ffp-contract=off", "-pthread"] + (["-UNDEBUG", "-O1", "-g"] if DEBUG else [])
link_args = [] if sys.platform == "win32" else ["-pthread"]  # the kernels' thread pool (_pool.h)

def ext(name):
    return Extension(
        f"fastnn.{name}",
        [f"src/fastnn/{name}.pyx"],
        include_dirs=[numpy.get_include(), "src/fastnn"],
        depends=["src/fastnn/_small.h", "src/fastnn/_small_impl.h", "src/fastnn/_pool.h",
                 "src/fastnn/_sparse.h", "src/fastnn/_sparse_impl.h"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )

setup(
    ext_modules=cythonize(
        [ext("_blas"), ext("_core")],
        include_path=["src"],
        compiler_directives=directives,
        compile_time_env={"FASTNN_DEBUG_CHECKS": DEBUG},
    ),
)
