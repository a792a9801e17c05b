"""up_fast: Universal Pretraining done right and fast, a drop-in for x_transformers.up_wrapper."""

# the public classes are imported on first use (PEP 562), so that `up-fast --version` and `--help`
# answer without importing torch

__all__ = ['PaperDataGenerator', 'SyntheticDataGenerator', 'UniversalPretrainWrapper', 'random_sequences']
__version__ = '0.1.0'

_HOMES = dict(
    PaperDataGenerator='up_fast.paper',
    SyntheticDataGenerator='up_fast.up_wrapper',
    UniversalPretrainWrapper='up_fast.up_wrapper',
    random_sequences='up_fast.up_wrapper',
)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib

    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *__all__])
