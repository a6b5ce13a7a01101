"""A pure-NumPy reference of everything the kernels do.

It is the oracle the tests compare the Cython path with, and a path a user can
force (``engine="numpy"``). It follows the same equations, written as plainly
as possible, allocating freely:

forward:   a_0 = X,  z_{l+1} = a_l W_l^T + b_l,  a_{l+1} = f_l(z_{l+1})
delta:     d_L = dC0/dz_L (mean over the m rows),  d_l = (d_{l+1} W_l) * f'(z_l)
gradient:  dC0/dW_l = d_{l+1}^T a_l,  dC0/db_l = sum_rows d_{l+1}
updates (g = mean gradient + (lmbda/n) W on weights, no L2 on biases):
    plain     W <- W - eta g
    momentum  v <- mu v - eta g;  W <- W + v
    Nesterov  v <- mu v - eta g;  W <- W + mu v - eta g
"""
import numpy as np

from fastnn.activations import ACTIVATIONS
from fastnn.costs import cost_sum as _cost_sum


def layer_views(net, params):
    """[(W_l, b_l)] views of a flat buffer in net's layout."""
    out, off = [], 0
    for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:]):
        W = params[off:off + n_out * n_in].reshape(n_out, n_in)
        off += n_out * n_in
        out.append((W, params[off:off + n_out]))
        off += n_out
    return out


def forward(net, params, X):
    """([a_0, ..., a_L], z_L) for the rows of X."""
    acts = [X]
    z = None
    for (W, b), name in zip(layer_views(net, params), net.activations):
        z = acts[-1] @ W.T + b
        acts.append(ACTIVATIONS[name].fn(z))
    return acts, z


def output_delta(net, a, T):
    """dC0_x/dz_L for each row (not yet divided by m)."""
    if net.cost == "log-likelihood":
        # C0 = sum_j y_j (logsumexp(z) - z_j): (sum_j y_j) a - y, = a - y for one-hot rows
        return T.sum(axis=1, keepdims=True) * a - T
    r = a - T
    if net.cost != "quadratic":
        return r  # sigmoid + cross-entropy
    if net.output == "softmax":
        return a * (r - np.sum(r * a, axis=1, keepdims=True))
    return r * ACTIVATIONS[net.output].derivative(a)


def backward(net, params, acts, T):
    """Mean gradient of C0 over the rows, a flat array in the params layout."""
    m = acts[0].shape[0]
    grads = []
    views = layer_views(net, params)
    d = output_delta(net, acts[-1], T) / m
    for l in range(len(views) - 1, -1, -1):
        W, _ = views[l]
        grads.append((d.T @ acts[l], d.sum(axis=0)))
        if l > 0:
            d = (d @ W) * ACTIVATIONS[net.activations[l - 1]].derivative(acts[l])
    grads.reverse()
    return np.concatenate([np.concatenate([gW.ravel(), gb]) for gW, gb in grads]).astype(params.dtype)


def classes(out, n_out):
    if n_out == 1:
        return (out[:, 0] > 0.5).astype(np.intp)
    return np.argmax(out, axis=1)


def evaluate(net, params, X, T, want_grad):
    """(sum of C0_x over rows, number classified right, mean gradient of C0 or None)."""
    acts, z = forward(net, params, X)
    total = _cost_sum(net.cost, z, acts[-1], T)
    correct = int(np.sum(classes(acts[-1], net.sizes[-1]) == classes(T, net.sizes[-1])))
    grad = backward(net, params, acts, T) if want_grad else None
    return total, correct, grad


def sgd_update(net, params, grad, vel, eta, mu, l2, nesterov):
    """One update of params (and vel) in place; returns True if all finite."""
    mask = net._weight_mask
    g = grad + np.where(mask, l2 * params, 0).astype(params.dtype)
    if mu == 0:
        params[mask] = (1 - eta * l2) * params[mask] - eta * grad[mask]
        params[~mask] = params[~mask] - eta * grad[~mask]
    else:
        vel[:] = mu * vel - eta * g
        if nesterov:
            params += mu * vel - eta * g
        else:
            params += vel
    return bool(np.isfinite(params).all())


def train_steps(net, params, grad, vel, X, Y, labels, perm, batch_size, start, stop,
                eta, mu, l2, nesterov):
    """Same contract as ``fastnn._core.train_steps``: returns (steps_done, finite)."""
    T = net._targets(Y, labels)
    steps, s = 0, start
    while s < stop:
        idx = perm[s:min(s + batch_size, stop)]
        acts, _ = forward(net, params, X[idx])
        grad[:] = backward(net, params, acts, T[idx])
        finite = sgd_update(net, params, grad, vel, eta, mu, l2, nesterov)
        steps += 1
        s += len(idx)
        if not finite:
            return steps, False
    return steps, True
