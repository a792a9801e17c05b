"""The environment variables: one parser for flags and choices, and a typo is an error, never "off"."""

import pytest

from up_fast import config
from up_fast.backend import check_backend


@pytest.mark.parametrize(
    'value, expected',
    [
        ('1', True),
        ('TRUE', True),
        (' yes ', True),
        ('on', True),
        ('0', False),
        ('', False),
        ('False', False),
        ('no', False),
        ('off', False),
    ],
)
def test_flag_words(monkeypatch, value, expected):
    monkeypatch.setenv(config.NVTX, value)
    assert config.nvtx_from_env() is expected


def test_unset_flag_is_off(monkeypatch):
    monkeypatch.delenv(config.KERNEL_CHECK, raising=False)
    assert config.kernel_check_from_env() is False


@pytest.mark.parametrize('name', [config.NVTX, config.KERNEL_CHECK, config.TRITON_INTERPRET])
def test_flag_typo_names_the_variable(monkeypatch, name):
    monkeypatch.setenv(name, 'ture')
    with pytest.raises(ValueError, match=f"{name} must be one of .*'ture'"):
        config.env_flag(name)


def test_backend_from_env(monkeypatch):
    monkeypatch.setenv(config.BACKEND, ' Torch ')
    assert check_backend(None) == 'torch'
    monkeypatch.setenv(config.BACKEND, '')
    assert check_backend(None) == 'auto'
    monkeypatch.setenv(config.BACKEND, 'cuda')
    with pytest.raises(ValueError, match="UP_FAST_BACKEND must be one of .*'cuda'"):
        check_backend(None)


def test_explicit_backend_wins_over_env(monkeypatch):
    monkeypatch.setenv(config.BACKEND, 'cuda')
    assert check_backend('torch') == 'torch'
