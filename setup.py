"""Packaging for matrixfed.

Metadata lives in setup.cfg; this file only adds the ``twisted.plugins``
drop-in directory, which has no ``__init__.py`` (Twisted's plugin system
requires that) and so is not found by ``find_packages``.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["matrixfed", "matrixfed.*"]) + ["twisted.plugins"],
)
