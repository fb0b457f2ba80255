"""Build script: declares the Cython extensions of ``ext/`` and their compiler directives.

Every ``ext/<name>.pyx`` becomes the extension module ``fastfanout._ext.<name>``.
Set ``FASTFANOUT_DEBUG=1`` for a debug build: C asserts and invariant checks on,
bounds checks on, line tracing and an annotated HTML listing per module.
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("FASTFANOUT_DEBUG", "") not in ("", "0")

# One place for every Cython directive. Bounds checks stay on by default and are
# switched off per function, only on proven hot paths, with a comment saying why.
DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
    "binding": False,
    "cdivision": True,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "linetrace": DEBUG,
    "profile": False,
}

# ``cimport fastfanout._ext.X`` must find ``ext/X.pxd``: Cython looks packages up on its
# include path, so the build exposes ext/ under that package name in build/.
INCLUDE_ROOT = os.path.join(HERE, "build", "cython_include")
package_link = os.path.join(INCLUDE_ROOT, "fastfanout", "_ext")
os.makedirs(os.path.dirname(package_link), exist_ok=True)
open(os.path.join(INCLUDE_ROOT, "fastfanout", "__init__.pxd"), "a").close()
if not os.path.islink(package_link):
    if os.path.exists(package_link):
        os.remove(package_link)
    os.symlink(os.path.join(HERE, "ext"), package_link)

macros = [("FASTFANOUT_DEBUG", "1" if DEBUG else "0")]
if DEBUG:
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
    compile_args = ["-O1", "-g", "-UNDEBUG"]
else:
    macros.append(("NDEBUG", "1"))
    # -g0: Python's own CFLAGS carry -g; debug info changes no generated code, and
    # without it the release build compiles about a third faster (symbols stay for perf).
    compile_args = ["-O3", "-g0"]

extensions = [
    Extension(
        "fastfanout._ext." + os.path.splitext(os.path.basename(path))[0],
        [os.path.relpath(path, HERE)],
        include_dirs=["ext"],
        define_macros=macros,
        extra_compile_args=[*compile_args, "-std=gnu11", "-Wno-unused-function"],
    )
    for path in sorted(glob.glob(os.path.join(HERE, "ext", "*.pyx")))
]
# Developers may rebuild a subset: FASTFANOUT_ONLY=ring,codec python setup.py build_ext -i
ONLY = {name for name in os.environ.get("FASTFANOUT_ONLY", "").split(",") if name}
if ONLY:
    extensions = [ext for ext in extensions if ext.name.rsplit(".", 1)[1] in ONLY]



class ParallelBuildExt(build_ext):
    """Compile the extension modules on every core, unless ``-j N`` says otherwise."""

    def finalize_options(self) -> None:
        """Default ``parallel`` to the number of cores."""
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1


setup(
    cmdclass={"build_ext": ParallelBuildExt},
    ext_modules=cythonize(
        extensions,
        nthreads=os.cpu_count() or 1,
        include_path=[INCLUDE_ROOT, "ext"],
        compiler_directives=DIRECTIVES,
        annotate=DEBUG,
        # The two builds use different directives: keep their generated C apart, or one
        # build would silently reuse the other's.
        build_dir=os.path.join("build", "cython-debug") if DEBUG else None,
    ),
)
