"""Only the optional C helper of the scanner; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the scanner uses its
pure-Python loop (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("cachemgr._scandir", ["cachemgr/_scandir.c"], optional=True)],
)
