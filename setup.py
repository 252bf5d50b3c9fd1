"""Packaging beyond what pyproject.toml can say: the CUDA sources travel in the wheel.

The kernels are compiled just in time on the user's machine (engine/ops/build.py), so an installed
exlsp needs csrc/ as much as a source checkout does. The wheel carries it as the package data of
engine.ops.csrc (csrc/ itself stays at the top of the repository; the file patterns are in
pyproject.toml's package-data); build.py looks for the checkout's csrc/ first, then that installed
copy.
"""

from setuptools import find_packages, setup

KERNEL_SOURCES = "engine.ops.csrc"

setup(
    packages=[*find_packages(include=["exlsp*", "engine*"]), KERNEL_SOURCES],
    package_dir={KERNEL_SOURCES: "csrc"},
)
