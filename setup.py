"""
Build script for the compiled core: every ``.pyx`` listed in ``EXTENSIONS``
becomes an extension module, cythonized at build time. Metadata lives in
pyproject.toml; this file only declares what must be compiled and how.
"""
import os

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from Cython.Build import cythonize

#: Directives every module shares (per-file headers may add more).
DIRECTIVES = {"language_level": "3", "embedsignature": True}

#: Module name -> source, relative to this file.
EXTENSIONS = {
    "asynqueue._speedups.scheduler": "asynqueue/_speedups/scheduler.pyx",
    "asynqueue._speedups.framing": "asynqueue/_speedups/framing.pyx",
    "asynqueue._speedups.allocator": "asynqueue/_speedups/allocator.pyx",
    "mcmandelbrot._kernel": "mcmandelbrot/_kernel.pyx",
    "mcmandelbrot._bitmap": "mcmandelbrot/_bitmap.pyx",
}

#: Module name -> header directories it needs besides Python's.
INCLUDE_DIRS = {"asynqueue._speedups.allocator": [numpy.get_include()]}

#: Optimize, but never contract a*b+c into one FMA: the Mandelbrot kernel
#: must give the same bits as its numpy twin.
COMPILE_ARGS = ["-O3", "-ffp-contract=off"]

#: ASYNQUEUE_CYTHON_TRACE=1 builds with line tracing, for coverage and profiling.
TRACE = os.environ.get("ASYNQUEUE_CYTHON_TRACE") == "1"


def extensions():
    """The list of Extension objects, cythonized with the shared directives."""
    directives = dict(DIRECTIVES, linetrace=TRACE)
    macros = [("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    modules = [
        Extension(name, [source], define_macros=macros,
                  include_dirs=INCLUDE_DIRS.get(name, []),
                  extra_compile_args=COMPILE_ARGS)
        for name, source in EXTENSIONS.items()
    ]
    return cythonize(modules, compiler_directives=directives)


class BuildExtensions(build_ext):
    """
    Builds the extensions and also copies them next to their sources, so
    that Python started in a checkout (where ``import asynqueue`` finds the
    source tree first) runs the compiled core that ``pip install .`` built.
    """

    def run(self):
        super().run()
        if not self.inplace:
            self.copy_extensions_to_source()


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtensions})
