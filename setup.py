"""The one part of the build pyproject.toml cannot state without an experimental table: the C
extension of the trainer's fused per-weight kernels (supsup_fin/masks/_native.py).

Plain C against Python's headers, built by the system C compiler at install time (no downloads).
Optional: without a compiler the install goes on, and the trainer takes the torch ops, which give
the same bits.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "supsup_fin.masks._kernels",
            sources=["supsup_fin/masks/_kernels.c"],
            # OpenMP: the process's libgomp.so.1, torch's own where torch ships one (one thread pool)
            extra_compile_args=["-O3", "-fopenmp", "-Wall", "-Werror=implicit-function-declaration"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
