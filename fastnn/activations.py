"""Neuron types: the activation registry.

Each activation has a kernel code (the number ``src/fastnn/_core.pyx`` uses),
a NumPy reference ``f(z)`` and its derivative written in terms of the output
``a = f(z)``, which is what the kernels use (no pre-activation is stored):

==========  ==========================  ======================
name        f(z)                        f'(z) in terms of a
==========  ==========================  ======================
identity    z                           1
sigmoid     1 / (1 + e^-z)              a (1 - a)
tanh        tanh z                      1 - a^2
relu        max(0, z)                   [a > 0]
softmax     e^z_j / sum_k e^z_k         (output only; Jacobian diag(a) - a a^T)
==========  ==========================  ======================
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Activation:
    name: str
    code: int
    fn: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]  # f'(z) from a = f(z)
    hidden_ok: bool = True


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_derivative(a):
    raise TypeError("softmax has a Jacobian, not an element-wise derivative")


ACTIVATIONS = {
    "identity": Activation("identity", 0, lambda z: z.copy(), lambda a: np.ones_like(a)),
    "sigmoid": Activation("sigmoid", 1, _sigmoid, lambda a: a * (1 - a)),
    "tanh": Activation("tanh", 2, np.tanh, lambda a: 1 - a * a),
    "relu": Activation("relu", 3, lambda z: np.maximum(z, 0), lambda a: (a > 0).astype(a.dtype)),
    "softmax": Activation("softmax", 4, _softmax, _softmax_derivative, hidden_ok=False),
}

HIDDEN_ACTIVATIONS = tuple(k for k, v in ACTIVATIONS.items() if v.hidden_ok)
OUTPUT_ACTIVATIONS = tuple(ACTIVATIONS)


def get_activation(name, *, parameter, output=False):
    """The Activation called ``name``; a ValueError names the valid choices."""
    valid = OUTPUT_ACTIVATIONS if output else HIDDEN_ACTIVATIONS
    if not isinstance(name, str) or name not in valid:
        extra = " (softmax is allowed only as the output activation)" if name == "softmax" else ""
        raise ValueError(
            f"The '{parameter}' parameter must be one of {', '.join(map(repr, valid))}{extra}. "
            f"Got {name!r} instead."
        )
    return ACTIVATIONS[name]
