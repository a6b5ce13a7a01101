"""First-order optimizers over the flat parameter buffer.

``SGD`` covers the three rules of chapter 3, one fused pass over the buffer each
(g is the mini-batch mean gradient plus (lmbda/n) W on weights, none on biases):

- plain (momentum = 0):  W <- W - eta g   (= network2's (1 - eta lmbda/n) W - (eta/m) sum grad)
- momentum (eq. 107-108): v <- mu v - eta g;  W <- W + v
- Nesterov (Sutskever et al. 2013, stored at the look-ahead point as in
  Bengio et al. 2012, Keras and scikit-learn):
  v <- mu v - eta g;  W <- W + mu v - eta g, with g taken at the stored W.
"""
import weakref

import numpy as np

from fastnn._validation import check_real


class SGD:
    """Mini-batch stochastic gradient descent, optionally with (Nesterov) momentum.

    Parameters
    ----------
    eta : float > 0, the learning rate.
    momentum : float in [0, 1), the momentum coefficient mu ("1 - friction").
    nesterov : bool, use Nesterov's accelerated gradient.

    The optimizer keeps its velocity between ``fit`` calls on the same network,
    so training continues where it stopped; used with another network it
    starts again from zero velocity.
    """

    def __init__(self, eta=0.1, momentum=0.0, nesterov=False):
        self.eta = check_real(eta, "eta", owner="SGD", low=0.0, low_inclusive=False)
        self.momentum = check_real(momentum, "momentum", owner="SGD", low=0.0, high=1.0,
                                   high_inclusive=False)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"The 'nesterov' parameter of SGD must be a bool. Got {nesterov!r} instead.")
        self.nesterov = bool(nesterov)
        self._velocity = None
        self._owner = None

    def __repr__(self):
        return f"SGD(eta={self.eta!r}, momentum={self.momentum!r}, nesterov={self.nesterov!r})"

    @property
    def velocity(self):
        """The velocity buffer (params layout), or None before the first step."""
        return self._velocity

    def reset(self):
        """Forget the velocity: the next fit starts from v = 0."""
        self._velocity = None
        self._owner = None

    def _state_for(self, net):
        """The velocity buffer for ``net``: kept if it belongs to it, else zeros."""
        owner = self._owner() if self._owner is not None else None
        v = self._velocity
        if owner is not net or v is None or v.shape != net.params.shape or v.dtype != net.params.dtype:
            self._velocity = np.zeros_like(net.params)
            self._owner = weakref.ref(net)
        return self._velocity

    def state_dict(self):
        """{'state': {'velocity': array or None}, 'param_groups': hyper-parameters}."""
        return {"state": {"velocity": None if self._velocity is None else self._velocity.copy()},
                "param_groups": {"eta": self.eta, "momentum": self.momentum,
                                 "nesterov": self.nesterov}}

    def load_state_dict(self, state, net=None):
        """Restore hyper-parameters and (for ``net``) the velocity."""
        g = state["param_groups"]
        self.__init__(g["eta"], g["momentum"], g["nesterov"])
        v = state["state"].get("velocity")
        if v is not None:
            if net is None:
                raise ValueError("load_state_dict needs the network the velocity belongs to (net=...).")
            if np.shape(v) != net.params.shape:
                raise ValueError(f"The velocity has shape {np.shape(v)}; the network's params have "
                                 f"shape {net.params.shape}.")
            self._velocity = np.array(v, dtype=net.params.dtype)
            self._owner = weakref.ref(net)
