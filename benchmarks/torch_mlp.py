"""The same training algorithm in idiomatic PyTorch (CPU), a timing baseline for fastnn.

``nn.Linear`` layers in an ``nn.Sequential``, the output non-linearity folded into the
loss the way PyTorch users write it (``binary_cross_entropy_with_logits`` for a sigmoid
output with the cross-entropy cost, ``cross_entropy`` for softmax + log-likelihood),
``torch.optim.SGD`` with momentum / Nesterov and L2 on the weights only through
parameter groups, and a plain loop that gathers each mini-batch from a tensor with a
shuffled index tensor.

PyTorch's SGD keeps a buffer ``b <- mu b + g`` and steps ``p <- p - eta b`` (Nesterov:
``p <- p - eta (g + mu b)``), with ``g = grad + weight_decay * p``. With ``v = -eta b``
that is exactly DESIGN.md's ``v <- mu v - eta g;  W <- W + v`` (Nesterov:
``W <- W + mu v - eta g``), so ``weight_decay = lmbda / n`` on the weight group and 0 on
the bias group gives the same trajectory (``test_baselines.py`` checks it).

torch is imported lazily: importing this module never fails; ``available()`` says whether
torch can be used.
"""
import os

_torch = None


def available():
    try:
        _import()
    except ImportError:
        return False
    return True


def _import():
    global _torch
    if _torch is None:
        import torch
        _torch = torch
    return _torch


def version():
    return _import().__version__


def blas_info():
    """The BLAS PyTorch was built with (linked statically: threadpoolctl cannot see it)."""
    import re

    m = re.search(r"BLAS_INFO=([\w.-]+)", _import().__config__.show())
    return m.group(1) if m else "unknown"


class TorchMLP:
    def __init__(self, sizes, hidden="sigmoid", output="sigmoid", cost="cross-entropy",
                 dtype="float32", eta=0.05, mu=0.0, nesterov=False, lmbda=0.0, n=1,
                 threads=None, seed=0):
        torch = _import()
        nn = torch.nn
        torch.set_num_threads(threads or os.cpu_count() or 1)
        torch.manual_seed(seed)
        self.torch = torch
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[str(dtype)]
        nl = len(sizes) - 1
        hidden = [hidden] * (nl - 1) if isinstance(hidden, str) else list(hidden)
        mods = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
                "identity": nn.Identity}
        layers = []
        for i in range(nl):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], dtype=self.dtype))
            if i < nl - 1:
                layers.append(mods[hidden[i]]())
        self.model = nn.Sequential(*layers)
        self.linears = [m for m in self.model if isinstance(m, nn.Linear)]
        self.cost, self.output = cost, output
        F = torch.nn.functional
        if cost == "cross-entropy":
            if output != "sigmoid":
                raise ValueError("cross-entropy needs a sigmoid output")

            def loss_fn(z, t):  # the book's C0: summed over outputs, mean over the batch
                return F.binary_cross_entropy_with_logits(z, t, reduction="sum") / z.shape[0]
        elif cost == "log-likelihood":
            if output != "softmax":
                raise ValueError("log-likelihood needs a softmax output")

            def loss_fn(z, t):  # t: int64 class labels
                return F.cross_entropy(z, t)
        else:
            out_act = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
                       "identity": lambda z: z,
                       "softmax": lambda z: torch.softmax(z, dim=1)}[output]

            def loss_fn(z, t):
                return 0.5 * (out_act(z) - t).pow(2).sum() / z.shape[0]
        self.loss_fn = loss_fn
        weights = [m.weight for m in self.linears]
        biases = [m.bias for m in self.linears]
        self.opt = torch.optim.SGD(
            [{"params": weights, "weight_decay": lmbda / n},
             {"params": biases, "weight_decay": 0.0}],
            lr=eta, momentum=mu, nesterov=nesterov)

    # data ------------------------------------------------------------------------
    def prepare(self, X, targets):
        """Tensors sharing memory with the NumPy arrays where possible.

        ``targets``: int labels (n,) for log-likelihood, else (n, n_out) one-hot/targets.
        """
        torch = self.torch
        Xt = torch.from_numpy(X).to(self.dtype)
        if self.cost == "log-likelihood":
            if targets.ndim == 2:
                targets = targets.argmax(axis=1)
            Tt = torch.from_numpy(targets.astype("int64", copy=False))
        else:
            Tt = torch.from_numpy(targets).to(self.dtype)
        return Xt, Tt

    def as_index(self, perm):
        return self.torch.from_numpy(perm.astype("int64", copy=False))

    # parameters (for tests) -----------------------------------------------------------
    def set_params(self, weights, biases):
        with self.torch.no_grad():
            for lin, W, b in zip(self.linears, weights, biases):
                lin.weight.copy_(self.torch.from_numpy(W.copy()))
                lin.bias.copy_(self.torch.from_numpy(b.copy()))

    def get_weights(self):
        return [lin.weight.detach().numpy().copy() for lin in self.linears]

    # training ---------------------------------------------------------------------------
    def train_epoch(self, Xt, Tt, perm_t, batch_size, max_batches=None):
        """One epoch (or its first ``max_batches`` mini-batches); last partial batch included."""
        model, opt, loss_fn = self.model, self.opt, self.loss_fn
        n = Xt.shape[0]
        stop = n if max_batches is None else min(n, max_batches * batch_size)
        model.train()
        for start in range(0, stop, batch_size):
            idx = perm_t[start:start + batch_size]
            xb, tb = Xt[idx], Tt[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), tb)
            loss.backward()
            opt.step()
