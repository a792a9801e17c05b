# Metadata lives in pyproject.toml; this file only lets older tools run `pip install -e .`.
from setuptools import setup

setup()
