"""setuptools shim: everything is in pyproject.toml except cffi_modules, which has no key there."""

from setuptools import setup

setup(cffi_modules=["loader/_libbpf_build.py:ffibuilder"])
