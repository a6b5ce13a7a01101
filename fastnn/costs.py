"""Cost functions: the cost registry.

For a batch of m samples with outputs ``a = f(z)`` and targets ``y``:

- quadratic:      C0 = (1/m) sum_x 1/2 ||a - y||^2,            any output
- cross-entropy:  C0 = -(1/m) sum_x sum_j [y ln a + (1-y) ln(1-a)],  sigmoid output
- log-likelihood: C0 = -(1/m) sum_x ln a_{y(x)},               softmax output

The total cost adds L2 on the weights: ``C = C0 + lmbda/(2n) sum_l ||W_l||^2``.
The matching pairs have the output delta ``dC0/dz = (a - y)/m``; the quadratic
cost has ``(a - y) f'(z) / m``. The NumPy references below compute the cost
from z, stably (``softplus(z) - y z`` and ``logsumexp(z) - z_y``), so a
saturated output never turns a finite network's cost into inf.
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class Cost:
    name: str
    code: int
    outputs: Tuple[str, ...]  # output activations this cost is defined for


COSTS = {
    "quadratic": Cost("quadratic", 0, ("identity", "sigmoid", "tanh", "relu", "softmax")),
    "cross-entropy": Cost("cross-entropy", 1, ("sigmoid",)),
    "log-likelihood": Cost("log-likelihood", 2, ("softmax",)),
}


def get_cost(name, output):
    """The Cost called ``name``, checked against the output activation."""
    if not isinstance(name, str) or name not in COSTS:
        raise ValueError(
            f"The 'cost' parameter must be one of {', '.join(map(repr, COSTS))}. "
            f"Got {name!r} instead."
        )
    cost = COSTS[name]
    if output not in cost.outputs:
        valid = [f"{c.name!r} with output in {c.outputs}" for c in COSTS.values()]
        raise ValueError(
            f"The cost {name!r} is not defined for the output activation {output!r}. "
            f"Valid pairs: {'; '.join(valid)}."
        )
    return cost


def _softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def cost_sum(name, z, a, y):
    """Sum over rows of the per-sample cost C0_x (NumPy reference).

    ``y`` is the (m, n_out) target matrix. Computed in float64.
    """
    z = np.asarray(z, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if name == "quadratic":
        return 0.5 * float(np.sum((a - y) ** 2))
    if name == "cross-entropy":
        return float(np.sum(_softplus(z) - y * z))
    mx = z.max(axis=1, keepdims=True)
    lse = mx + np.log(np.sum(np.exp(z - mx), axis=1, keepdims=True))
    return float(np.sum(y * (lse - z)))
