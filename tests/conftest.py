import os

# Triton reads TRITON_INTERPRET when a kernel is defined: set it before anything imports triton,
# so that without a GPU the kernel tests run under the interpreter (numpy emulation).
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_cuda = False

if not _has_cuda:
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest
import torch
from x_transformers import Decoder, TransformerWrapper


def pytest_addoption(parser):
    parser.addoption(
        '--triton-side',
        action='store_true',
        default=False,
        help='also run the compile gate under Triton 3.6, from a side environment made on first use '
        'in .cache/ (CI does it by default; see tests/test_compile_gate.py)',
    )


def tiny_model(num_tokens=256, dim=32, depth=1, heads=2, max_seq_len=64):
    return TransformerWrapper(
        num_tokens=num_tokens,
        max_seq_len=max_seq_len,
        attn_layers=Decoder(dim=dim, depth=depth, heads=heads),
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    return tiny_model()
