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


def update(net, params, grad, vel, sq, mode, eta, mu, l2, beta1, beta2, eps, t):
    """One update of params (and its state) in place; returns True if all finite.

    mode: 0 plain, 1 momentum, 2 Nesterov, 3 Adam (t = this step's number)."""
    mask = net._weight_mask
    g = grad + np.where(mask, l2 * params, 0).astype(params.dtype)
    if mode == 0:
        params[mask] = (1 - eta * l2) * params[mask] - eta * grad[mask]
        params[~mask] = params[~mask] - eta * grad[~mask]
    elif mode in (1, 2):
        vel[:] = mu * vel - eta * g
        if mode == 2:
            params += mu * vel - eta * g
        else:
            params += vel
    else:
        lr_t = eta * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        vel[:] = beta1 * vel + (1 - beta1) * g
        sq[:] = beta2 * sq + (1 - beta2) * (g * g)
        params -= lr_t * vel / (np.sqrt(sq) + eps)
    return bool(np.isfinite(params).all())


def sgd_update(net, params, grad, vel, eta, mu, l2, nesterov):
    """The SGD rules of ``update``."""
    mode = 0 if mu == 0 else (2 if nesterov else 1)
    return update(net, params, grad, vel, vel, mode, eta, mu, l2, 0.0, 0.0, 0.0, 0)


def train_steps(net, params, grad, vel, sq, X, Y, labels, perm, batch_size, start, stop,
                mode, eta, mu, l2, l2_per_batch, beta1, beta2, eps, t, want_loss):
    """Same contract as ``fastnn._core.train_steps``: (steps_done, finite, loss_sum, t)."""
    T = net._targets(Y, labels)
    steps, s, loss = 0, start, 0.0
    while s < stop:
        idx = perm[s:min(s + batch_size, stop)]
        m = len(idx)
        l2_b = l2 / m if l2_per_batch else l2
        acts, z = forward(net, params, X[idx])
        if want_loss:
            loss += _cost_sum(net.cost, z, acts[-1], T[idx])
            if l2_b:
                loss += 0.5 * l2_b * m * sum(float(np.sum(W.astype(np.float64) ** 2))
                                             for W, _ in layer_views(net, params))
        grad[:] = backward(net, params, acts, T[idx])
        if mode == 3:
            t += 1
        finite = update(net, params, grad, vel, sq, mode, eta, mu, l2_b, beta1, beta2, eps, t)
        steps += 1
        s += m
        if not finite:
            return steps, False, loss, t
    return steps, True, loss, t
