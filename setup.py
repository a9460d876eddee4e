"""Build hook: setuptools needs ``cffi_modules`` from here; all metadata lives in pyproject.toml.

Set ``PHOENIX_TRIO_NO_EXTENSIONS=1`` at install time to skip the C core entirely; the
pure-Python implementation is then used (``phoenix_trio.core.IMPLEMENTATION == "python"``).
"""

import os

from setuptools import setup

if os.environ.get("PHOENIX_TRIO_NO_EXTENSIONS"):
    setup()
else:
    setup(cffi_modules=["build_ext.py:ffibuilder"])
