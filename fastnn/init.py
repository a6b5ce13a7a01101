"""Weight initializers.

Each draws ``W_l`` of shape ``(n_out, n_in)`` and ``b_l`` of shape ``(n_out,)``
layer by layer, in the order W_1, b_1, W_2, b_2, ..., from a NumPy Generator,
in float64 (so the float32 and float64 networks of one seed agree to rounding):

- default: W ~ N(0, 1/n_in), b ~ N(0, 1)   (network2's default_weight_initializer)
- large:   W ~ N(0, 1),      b ~ N(0, 1)   (network2's large_weight_initializer)
- glorot:  W ~ U(-r, r), r = sqrt(6 / (n_in + n_out)), b = 0   (Glorot & Bengio 2010)
- he:      W ~ N(0, 2/n_in), b = 0         (He et al. 2015, for ReLU)
"""
import numpy as np


def _default(rng, n_in, n_out):
    return rng.standard_normal((n_out, n_in)) / np.sqrt(n_in), rng.standard_normal(n_out)


def _large(rng, n_in, n_out):
    return rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)


def _glorot(rng, n_in, n_out):
    r = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-r, r, (n_out, n_in)), np.zeros(n_out)


def _he(rng, n_in, n_out):
    return rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in), np.zeros(n_out)


INITIALIZERS = {"default": _default, "large": _large, "glorot": _glorot, "he": _he}


def get_initializer(name):
    if not isinstance(name, str) or name not in INITIALIZERS:
        raise ValueError(f"The 'init' parameter must be one of {', '.join(map(repr, INITIALIZERS))}. "
                         f"Got {name!r} instead.")
    return INITIALIZERS[name]


def initialize(params_views, sizes, name, rng):
    """Fill the (W, b) views in place with the initializer called ``name``."""
    draw = get_initializer(name)
    for (W, b), n_in, n_out in zip(params_views, sizes[:-1], sizes[1:]):
        w, bb = draw(rng, n_in, n_out)
        W[...] = w
        b[...] = bb
