"""fastnn: fast fully-connected neural networks from NumPy.

The techniques of chapter 3 of Nielsen's *Neural Networks and Deep Learning*
on Cython kernels: mini-batch SGD, momentum, Nesterov's accelerated gradient,
sigmoid / tanh / ReLU neurons, cross-entropy, log-likelihood and quadratic
costs, L2 regularization, network2's initialization, monitoring, save/load.

    >>> import fastnn
    >>> net = fastnn.Network([784, 30, 10])
    >>> hist = net.fit(X, y, epochs=5, batch_size=10, optimizer=fastnn.SGD(eta=0.5))
"""
__version__ = "0.1.0"

from fastnn import _kernels  # noqa: F401  (fails early, with a fix, if the build is missing)
from fastnn.io import load
from fastnn.network import Network
from fastnn.optimizers import SGD, Adam
from fastnn.second_order import BFGS, LBFGS, ConjugateGradient, HessianFree, Newton
from fastnn.threads import get_num_threads, set_num_threads
from fastnn.training import Callback, EarlyStopping, History, TrainingDiverged

__all__ = ["Network", "SGD", "Adam", "Newton", "HessianFree", "ConjugateGradient", "BFGS", "LBFGS", "load", "History", "Callback", "EarlyStopping", "TrainingDiverged",
           "get_num_threads", "set_num_threads", "__version__"]
