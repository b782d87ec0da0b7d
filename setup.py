"""Build the compiled core of shardflow.

Every ``ext/shardflow/<name>.pyx`` becomes the extension ``shardflow.<name>``; the
directory mirrors the package so that absolute ``cimport shardflow._ring`` works.

Knobs (environment variables, read at build time):

``SHARDFLOW_DEBUG=1``
    ``-O0 -g3`` with C assertions on (``NDEBUG`` undefined) and Cython's
    ``boundscheck``/``wraparound`` back on.
``SHARDFLOW_SANITIZE=address|thread|undefined`` (comma-separated)
    compile and link the extension with the sanitizer(s); run Python with the
    runtime preloaded, see CONTRIBUTING.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
EXT_DIR = Path("ext")

DEBUG = os.environ.get("SHARDFLOW_DEBUG", "") == "1"
SANITIZE = [s for s in os.environ.get("SHARDFLOW_SANITIZE", "").split(",") if s]
_ALLOWED_SANITIZERS = {"address", "thread", "undefined"}
if set(SANITIZE) - _ALLOWED_SANITIZERS:
    raise SystemExit(
        f"SHARDFLOW_SANITIZE={os.environ['SHARDFLOW_SANITIZE']!r}: accepted values are "
        f"{sorted(_ALLOWED_SANITIZERS)}, comma-separated"
    )

if sys.platform == "win32":
    # MSVC has C11 atomics only behind this flag (VS 2022 17.5+).
    compile_args = ["/std:c11", "/experimental:c11atomics"]
    link_args: list[str] = []
    if DEBUG:
        compile_args += ["/Od", "/Zi"]
else:
    compile_args = ["-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    link_args = []
    if DEBUG:
        compile_args += ["-O0", "-g3", "-UNDEBUG"]
    else:
        compile_args += ["-O2"]
    for name in SANITIZE:
        compile_args += [f"-fsanitize={name}", "-fno-omit-frame-pointer", "-g"]
        link_args += [f"-fsanitize={name}"]

macros = [] if DEBUG else [("NDEBUG", "1")]
if sys.platform != "win32":
    macros.append(("_GNU_SOURCE", "1"))

directives = {
    "language_level": 3,
    "freethreading_compatible": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "embedsignature": True,
    "cdivision": True,
    "initializedcheck": DEBUG,
}

extensions = [
    Extension(
        f"shardflow.{pyx.stem}",
        [str(pyx)],
        include_dirs=[str(EXT_DIR)],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        depends=[str(h) for h in sorted((EXT_DIR / "shardflow").glob("*.h"))]
        + [str(p) for p in sorted((EXT_DIR / "shardflow").glob("*.pxd"))],
    )
    for pyx in sorted((EXT_DIR / "shardflow").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=[str(EXT_DIR)],
        # Generated C stays out of the source tree. The debug knob changes Cython's
        # directives, which cythonize does not track: a separate directory per flavour
        # keeps a no-build-isolation rebuild from reusing C generated for the other one.
        build_dir="build/cython-debug" if DEBUG else "build/cython",
        compiler_directives=directives,
        annotate=os.environ.get("SHARDFLOW_ANNOTATE", "") == "1",
    ),
)
