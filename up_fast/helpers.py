"""Small helpers shared across up_fast, in the style of x-transformers."""


def exists(v):
    return v is not None


def default(v, d):
    return v if exists(v) else d


def divisible_by(num, den):
    return (num % den) == 0
