"""up_fast: Universal Pretraining done right and fast, a drop-in for x_transformers.up_wrapper."""

from up_fast.up_wrapper import (
    SyntheticDataGenerator,
    UniversalPretrainWrapper,
    random_sequences,
)
from up_fast.paper import PaperDataGenerator


__all__ = ['PaperDataGenerator', 'SyntheticDataGenerator', 'UniversalPretrainWrapper', 'random_sequences']
__version__ = '0.1.0'
