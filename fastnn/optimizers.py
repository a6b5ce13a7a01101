"""Optimizers over the flat parameter buffer, each one fused pass per step.

g is the mini-batch mean gradient plus the L2 term l2 W on weights (none on
biases), with l2 = lmbda / n (the book's convention; scikit-learn's facade
uses alpha / m):

- ``SGD``, plain (momentum = 0):  W <- W - eta g
  (= network2's (1 - eta lmbda/n) W - (eta/m) sum grad)
- ``SGD``, momentum (eq. 107-108):  v <- mu v - eta g;  W <- W + v
- ``SGD``, Nesterov (Sutskever et al. 2013, stored at the look-ahead point as
  in Bengio et al. 2012, Keras and scikit-learn):
  v <- mu v - eta g;  W <- W + mu v - eta g, with g taken at the stored W.
- ``Adam`` (Kingma & Ba 2015, scikit-learn's form): t <- t + 1;
  m <- b1 m + (1 - b1) g;  s <- b2 s + (1 - b2) g^2;
  W <- W - eta sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(s) + eps).

An optimizer keeps its state (velocity, moments, step count) between ``fit``
calls on the same network, so training continues where it stopped; used with
another network it starts again from zero state.
"""
import weakref

import numpy as np

from fastnn._memory import aligned_copy, aligned_zeros
from fastnn._validation import check_real

# update rule codes of fastnn._core
PLAIN, MOMENTUM, NESTEROV, ADAM = 0, 1, 2, 3


class Optimizer:
    """Base: per-network state buffers in the params layout."""

    _n_buffers = 1

    def __init__(self):
        self._buffers = None
        self._owner = None
        self.t = 0

    def reset(self):
        """Forget the state: the next fit starts from zero velocity / moments."""
        self._buffers = None
        self._owner = None
        self.t = 0

    def _state_for(self, net):
        """The state buffers for ``net``: kept if they belong to it, else zeros."""
        owner = self._owner() if self._owner is not None else None
        b = self._buffers
        if (owner is not net or b is None or b[0].shape != net.params.shape
                or b[0].dtype != net.params.dtype):
            self._buffers = [aligned_zeros(net.n_params, net.params.dtype)
                             for _ in range(self._n_buffers)]
            self._owner = weakref.ref(net)
            self.t = 0
        return self._buffers

    def _hyper(self):
        raise NotImplementedError

    def state_dict(self):
        """{'state': {buffers..., 't'}, 'param_groups': hyper-parameters}."""
        names = self._buffer_names
        state = {n: (None if self._buffers is None else self._buffers[i].copy())
                 for i, n in enumerate(names)}
        state["t"] = self.t
        return {"state": state, "param_groups": self._hyper()}

    def load_state_dict(self, state, net=None):
        """Restore hyper-parameters and (for ``net``) the state buffers."""
        self.__init__(**state["param_groups"])
        bufs = [state["state"].get(n) for n in self._buffer_names]
        if any(b is not None for b in bufs):
            if net is None:
                raise ValueError("load_state_dict needs the network the state belongs to (net=...).")
            for b in bufs:
                if b is None or np.shape(b) != net.params.shape:
                    raise ValueError(f"The optimizer state has shape {np.shape(b)}; the network's "
                                     f"params have shape {net.params.shape}.")
            self._buffers = [aligned_copy(b, net.params.dtype) for b in bufs]
            self._owner = weakref.ref(net)
            self.t = int(state["state"].get("t", 0))


class SGD(Optimizer):
    """Mini-batch stochastic gradient descent, optionally with (Nesterov) momentum.

    Parameters
    ----------
    eta : float > 0, the learning rate.
    momentum : float in [0, 1), the momentum coefficient mu ("1 - friction").
    nesterov : bool, use Nesterov's accelerated gradient.
    """

    _buffer_names = ("velocity",)

    def __init__(self, eta=0.1, momentum=0.0, nesterov=False):
        super().__init__()
        self.eta = check_real(eta, "eta", owner="SGD", low=0.0, low_inclusive=False)
        self.momentum = check_real(momentum, "momentum", owner="SGD", low=0.0, high=1.0,
                                   high_inclusive=False)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"The 'nesterov' parameter of SGD must be a bool. Got {nesterov!r} instead.")
        self.nesterov = bool(nesterov)

    def __repr__(self):
        return f"SGD(eta={self.eta!r}, momentum={self.momentum!r}, nesterov={self.nesterov!r})"

    def _hyper(self):
        return {"eta": self.eta, "momentum": self.momentum, "nesterov": self.nesterov}

    @property
    def _mode(self):
        if self.momentum == 0:
            return PLAIN
        return NESTEROV if self.nesterov else MOMENTUM

    @property
    def velocity(self):
        """The velocity buffer (params layout), or None before the first step."""
        return None if self._buffers is None else self._buffers[0]


class Adam(Optimizer):
    """Adam with bias correction, as in scikit-learn's MLP (see the module docstring).

    Parameters
    ----------
    eta : float > 0, the learning rate (scikit-learn's learning_rate_init).
    beta1, beta2 : floats in [0, 1), the moment decay rates.
    epsilon : float > 0, added to sqrt(s) for numerical stability.
    """

    _n_buffers = 2
    _buffer_names = ("m", "s")

    def __init__(self, eta=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8):
        super().__init__()
        self.eta = check_real(eta, "eta", owner="Adam", low=0.0, low_inclusive=False)
        self.beta1 = check_real(beta1, "beta1", owner="Adam", low=0.0, high=1.0, high_inclusive=False)
        self.beta2 = check_real(beta2, "beta2", owner="Adam", low=0.0, high=1.0, high_inclusive=False)
        self.epsilon = check_real(epsilon, "epsilon", owner="Adam", low=0.0, low_inclusive=False)

    def __repr__(self):
        return (f"Adam(eta={self.eta!r}, beta1={self.beta1!r}, beta2={self.beta2!r}, "
                f"epsilon={self.epsilon!r})")

    def _hyper(self):
        return {"eta": self.eta, "beta1": self.beta1, "beta2": self.beta2, "epsilon": self.epsilon}

    _mode = ADAM
    momentum = 0.0
    nesterov = False
