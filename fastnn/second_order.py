"""Second-order and full-batch optimizers: Newton, Hessian-free, CG, BFGS, L-BFGS.

Each is used like SGD, through ``net.fit(X, y, epochs=K, optimizer=...)``; there an
"epoch" is one *iteration* of the method, and ``fit``'s ``batch_size`` / ``shuffle`` are
ignored (each optimizer has its own ``batch_size``). The objective is DESIGN.md's

    C(w) = C0(w) + lmbda/(2n) sum_l ||W_l||^2      over the n training rows.

``fit`` returns the same ``fastnn.training.History`` as SGD, one row per iteration, with
the extra series

- ``grad_norm``: ||grad C||_2 at the row's parameters (for mini-batch gradients: the norm of
  the iteration's batch gradient);
- ``n_fev``, ``n_grad``, ``n_hvp``: *cumulative* counts of cost evaluations, gradient
  evaluations and curvature products (Hessian or Gauss-Newton matrix times a vector; a full
  Hessian counts P products). Each counts one pass over the rows it used (the training set,
  or the optimizer's mini-batch / curvature batch);
- ``train_cost``/``train_accuracy`` (when ``monitor_training``), ``val_cost``/``val_accuracy``
  (with ``validation_data``), ``seconds`` (the iteration's wall time, monitoring excluded),
- and per method: ``damping`` (Newton, HessianFree), ``solve`` (Newton), ``cg_iter``,
  ``rho``, ``step`` (HessianFree).

Callbacks get the history after every iteration; one returning True stops the fit. A step
that makes the cost non-finite is never taken silently: the network keeps its last finite
parameters and ``fastnn.TrainingDiverged`` is raised.
"""
import math
import time
import weakref

import numpy as np

from fastnn import curvature
from fastnn._validation import check_int, check_real, check_seed
from fastnn.training import History, TrainingDiverged, _format_row
from fastnn.threads import blas_limit, kernel_blas

__all__ = ["Newton", "HessianFree", "ConjugateGradient", "BFGS", "LBFGS"]

_BASE_EXTRA = ("grad_norm", "n_fev", "n_grad", "n_hvp")


class _Run:
    """Bookkeeping of one fit: counters, timing, monitoring, history rows, callbacks."""

    def __init__(self, net, X, Y, labels, lmbda, validation, callbacks, monitor_training, verbose,
                 extra=()):
        self.net, self.X, self.Y, self.labels, self.lmbda = net, X, Y, labels, lmbda
        self.validation = validation
        self.callbacks = callbacks
        self.monitor_training = monitor_training
        self.verbose = verbose
        self.history = History(extra=_BASE_EXTRA + tuple(extra))
        self.n_fev = self.n_grad = self.n_hvp = 0
        self.t_last = time.perf_counter()

    def restart_clock(self):
        self.t_last = time.perf_counter()

    def evaluate(self):
        """(cost, accuracy, gradient float64) over the whole training set: one fused pass."""
        cost, acc, g = self.net._evaluate(self.X, self.Y, self.labels, self.lmbda, True)
        self.n_fev += 1
        self.n_grad += 1
        return float(cost), acc, np.asarray(g, dtype=np.float64)

    def record(self, epoch, *, grad_norm, train=None, good_params=None, **more):
        """Append a row; returns True when a callback asks to stop. ``train`` is
        (cost, accuracy) at the current parameters when already known."""
        seconds = time.perf_counter() - self.t_last
        net = self.net
        row = {"epoch": epoch, "seconds": seconds, "grad_norm": grad_norm, "n_fev": self.n_fev,
               "n_grad": self.n_grad, "n_hvp": self.n_hvp}
        row.update(more)
        if self.monitor_training:
            if train is None:
                train = net._evaluate(self.X, self.Y, self.labels, self.lmbda, False)[:2]
            row["train_cost"], row["train_accuracy"] = float(train[0]), float(train[1])
        if self.validation is not None:
            c, a, _ = net._evaluate(*self.validation, self.lmbda, False)
            row["val_cost"], row["val_accuracy"] = float(c), float(a)
        for key in ("train_cost", "val_cost"):
            if row.get(key) is not None and not np.isfinite(row[key]):
                if good_params is not None:
                    net.params[:] = good_params
                raise TrainingDiverged(
                    f"Training diverged in iteration {epoch}: the monitored {key} is {row[key]}. "
                    f"The network keeps its last finite parameters.", epoch=epoch, step=None,
                    history=self.history)
        self.history._append(**row)
        if self.verbose:
            extra = "  ".join(f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}"
                              for k in ("grad_norm", "n_fev", "n_hvp") if row.get(k) is not None)
            print(_format_row(row) + "  " + extra, flush=True)
        stop = False
        for cb in self.callbacks:
            stop = bool(cb(self.history)) or stop
        if stop:
            self.history.stopped_early = True
        self.restart_clock()
        return stop


class _Stateful:
    """Optimizer state (e.g. damping, previous direction) kept for one network between
    fits, like fastnn.SGD's velocity; ``reset()`` forgets it."""

    def __init__(self):
        self._owner = None
        self._state = None

    def reset(self):
        self._owner = None
        self._state = None

    def _state_for(self, net, make):
        owner = self._owner() if self._owner is not None else None
        if owner is not net or self._state is None or self._state.get("P") != net.n_params:
            self._state = make()
            self._state["P"] = net.n_params
            self._owner = weakref.ref(net)
        return self._state


def _rng_for(own_seed, fit_seed):
    return np.random.default_rng(own_seed if own_seed is not None else fit_seed)


def _take_rows(X, Y, labels, idx):
    Xb = X[idx]
    Yb = Y[idx] if Y.shape[0] else Y
    Lb = labels[idx] if labels.shape[0] else labels
    return Xb, Yb, Lb


def _check_batch(value, name, owner):
    if value is None:
        return None
    return check_int(value, name, owner=owner, low=1)


# =========================================================================== Newton

class Newton(_Stateful):
    """The book's Hessian technique (eq. 106) with the exact Hessian.

    Every iteration:

    1. ``g = grad C(w)`` over the training set;
    2. ``H`` = the exact Hessian of C (``fastnn.curvature.hessian``: R-operator products,
       P of them) over the training set, or over ``batch_size`` rows drawn at random
       without replacement each iteration;
    3. solve ``(H + damping I) dw = -g`` by Cholesky (``scipy.linalg.cho_factor``);
    4. ``w <- w + eta dw``; with ``line_search=True`` the step is the first of
       ``eta, eta/2, eta/4, ...`` (at most ``max_ls`` halvings) that satisfies Armijo's
       condition ``C(w + s dw) <= C(w) + 1e-4 s g.dw``, and no step if none does.

    When ``H + damping I`` is not positive definite (Cholesky fails) the ``fallback`` says
    what to solve instead - never a silent NaN:

    - ``"saddle-free"`` (Dauphin et al. 2014): eigen-decompose ``H = Q diag(l) Q^T`` and use
      ``|H| = Q diag(max(|l|, damping)) Q^T`` (with damping 0, the floor is
      ``1e-12 max|l|``), which turns saddle directions into descent directions;
    - ``"damping"`` (Levenberg-Marquardt style): multiply the damping by 10 (starting from
      ``max(damping, 1e-8 mean|diag H|)``) until Cholesky succeeds, at most 30 times;
    - ``"raise"``: a ``numpy.linalg.LinAlgError``.

    The ``solve`` series of the history says which was used, ``damping`` the value,
    ``step`` the step factor taken.
    On a convex quadratic cost (identity activations and quadratic cost: linear least
    squares) with ``damping=0`` and ``eta=1`` one step reaches the exact minimum.

    Parameters
    ----------
    eta : float > 0, the step factor (the book's learning rate).
    damping : float >= 0, added to the Hessian's diagonal.
    fallback : 'saddle-free', 'damping' or 'raise'.
    batch_size : None (the whole training set) or int, the rows of each Hessian.
    line_search : bool, backtrack on the step (see 4.); max_ls : int >= 0, its halvings.
    seed : int or None, for the Hessian's rows (default: fit's seed).
    max_bytes : int or None, memory allowed for the P x P matrices (default: a quarter of
        the available memory); beyond it fit raises ``CurvatureMemoryError``.
    """

    FALLBACKS = ("saddle-free", "damping", "raise")

    def __init__(self, eta=1.0, damping=1e-4, fallback="saddle-free", batch_size=None,
                 line_search=False, max_ls=30, seed=None, max_bytes=None):
        super().__init__()
        self.eta = check_real(eta, "eta", owner="Newton", low=0.0, low_inclusive=False)
        self.damping = check_real(damping, "damping", owner="Newton", low=0.0)
        if fallback not in self.FALLBACKS:
            raise ValueError(f"The 'fallback' parameter of Newton must be one of {self.FALLBACKS}. "
                             f"Got {fallback!r} instead.")
        self.fallback = fallback
        self.batch_size = _check_batch(batch_size, "batch_size", "Newton")
        if not isinstance(line_search, (bool, np.bool_)):
            raise TypeError(f"The 'line_search' parameter of Newton must be a bool. "
                            f"Got {line_search!r} instead.")
        self.line_search = bool(line_search)
        self.max_ls = check_int(max_ls, "max_ls", owner="Newton", low=0)
        self.seed = check_seed(seed)
        self.max_bytes = max_bytes

    def __repr__(self):
        return (f"Newton(eta={self.eta!r}, damping={self.damping!r}, fallback={self.fallback!r}, "
                f"batch_size={self.batch_size!r}, line_search={self.line_search!r})")

    def _check_memory(self, net):
        P = net.n_params
        curvature.check_memory(
            3 * P * P * 8 + curvature.BLOCK_BYTES,
            f"Newton's method on this network ({P} parameters: the Hessian, its Cholesky factor "
            f"and eigen-decomposition, {P} x {P} float64 each)",
            "Use fastnn.HessianFree (Gauss-Newton products, no P x P matrix) or fastnn.LBFGS.",
            self.max_bytes)

    def direction(self, H, g):
        """(dw, solve, damping) for the Hessian H (float64, modified in place) and gradient g."""
        from scipy.linalg import cho_factor, cho_solve, eigh, LinAlgError
        P = H.shape[0]
        diag = np.arange(P)
        H[diag, diag] += self.damping
        try:
            c = cho_factor(H, lower=True, check_finite=False)
            return -cho_solve(c, g, check_finite=False), "cholesky", self.damping
        except LinAlgError:
            pass
        H[diag, diag] -= self.damping
        if self.fallback == "raise":
            raise LinAlgError(f"Newton: H + {self.damping} I is not positive definite "
                              f"(fallback='raise').")
        if self.fallback == "damping":
            mu = max(self.damping, 1e-8 * float(np.mean(np.abs(H[diag, diag]))), 1e-12)
            for _ in range(30):
                mu *= 10
                H[diag, diag] += mu
                try:
                    c = cho_factor(H, lower=True, check_finite=False)
                    return -cho_solve(c, g, check_finite=False), "damping", mu
                except LinAlgError:
                    H[diag, diag] -= mu
            raise LinAlgError(f"Newton: H + mu I is not positive definite even for mu = {mu:g}.")
        lam, Q = eigh(H, overwrite_a=True, check_finite=False, driver="evd")
        absl = np.abs(lam)
        floor = self.damping if self.damping > 0 else 1e-12 * max(float(absl.max()), 1e-300)
        absl = np.maximum(absl, floor)
        return -(Q @ ((Q.T @ g) / absl)), "saddle-free", floor

    def _fit_network(self, net, X, Y, labels, *, epochs, batch_size, lmbda, validation, shuffle,
                     seed, callbacks, monitor_training, verbose):
        self._check_memory(net)
        run = _Run(net, X, Y, labels, lmbda, validation, callbacks, monitor_training, verbose,
                   extra=("damping", "solve", "step"))
        rng = _rng_for(self.seed, seed)
        n = X.shape[0]
        cost, acc, g = run.evaluate()
        for it in range(epochs):
            if self.batch_size is None or self.batch_size >= n:
                Xh, Yh, Lh, lm_h = X, Y, labels, lmbda
            else:
                idx = np.sort(rng.choice(n, self.batch_size, replace=False))
                Xh, Yh, Lh = _take_rows(X, Y, labels, idx)
                lm_h = lmbda * self.batch_size / n  # keeps the L2 term lmbda/n of the full cost
            lin = curvature.Linearization(net, Xh, Yh, Lh, lm_h, exact=True, cache=True)
            H = curvature._hessian(lin, np.float64)
            run.n_hvp += net.n_params
            dw, solve, used = self.direction(H, g)
            del H
            if not np.all(np.isfinite(dw)):
                raise TrainingDiverged(f"Newton iteration {it}: the step is not finite (the "
                                       f"Hessian or gradient holds inf/NaN).", epoch=it,
                                       step=None, history=run.history)
            old = net.params.copy()
            step = self.eta
            if self.line_search:
                gdw = float(g @ dw)
                for _ in range(self.max_ls + 1):
                    net.params[:] = old + (step * dw).astype(net.dtype)
                    c = float(net._evaluate(X, Y, labels, lmbda, False)[0])
                    run.n_fev += 1
                    if np.isfinite(c) and c <= cost + 1e-4 * step * gdw:
                        break
                    step *= 0.5
                else:
                    step = 0.0
                net.params[:] = old + (step * dw).astype(net.dtype)
            else:
                net.params += (step * dw).astype(net.dtype)
            cost, acc, g = run.evaluate()
            if not (np.isfinite(cost) and np.all(np.isfinite(g))):
                net.params[:] = old
                raise TrainingDiverged(
                    f"Training diverged in Newton iteration {it}: the cost after the step is "
                    f"{cost}. The network keeps the parameters before it; try a smaller eta (was "
                    f"{self.eta}) or a larger damping.", epoch=it, step=None, history=run.history)
            if run.record(it, grad_norm=float(np.linalg.norm(g)), train=(cost, acc),
                          good_params=old, damping=used, solve=solve, step=step):
                break
        return run.history


# =========================================================================== Hessian-free

class HessianFree(_Stateful):
    """Hessian-free optimization (Martens 2010) with Gauss-Newton curvature.

    Every iteration, with ``w`` the parameters, ``g`` the gradient of C on the gradient
    batch (the training set, or ``batch_size`` random rows) and ``G`` the generalized
    Gauss-Newton matrix (``fastnn.curvature``) on a curvature batch of
    ``curvature_batch_size`` rows drawn from the gradient batch:

    1. Conjugate gradient on ``(G + lambda I) p = -g``, i.e. minimizing
       ``phi(p) = g.p + 1/2 p.(G + lambda I).p``, started from ``cg_decay * p_prev``
       (``p_prev``: the previous iteration's last CG iterate; from 0 if that start has
       ``phi >= 0``). It stops after ``max_cg_iter`` iterations or by Martens' relative
       progress test: at iteration i, with ``k = max(10, i // 10)``, when ``phi_i < 0`` and
       ``(phi_i - phi_{i-k}) / phi_i < k * cg_tol``.
    2. CG-iterate backtracking: the iterates at ``i = ceil(1.3^j)`` and the last are kept;
       starting from the last, go back to earlier ones while the cost C(w + p_i) on the
       gradient batch decreases; ``p`` is the best.
    3. Levenberg-Marquardt: ``rho = (C(w + p) - C(w)) / (g.p + 1/2 p.G.p)`` (the model
       with the undamped G, as Martens & Sutskever 2012 recommend); ``rho < 1/4``:
       ``lambda *= 3/2``; ``rho > 3/4``: ``lambda *= 2/3``.
    4. Armijo backtracking line search: the largest ``alpha = 0.8^k`` (k = 0..``max_ls``)
       with ``C(w + alpha p) <= C(w) + armijo * alpha g.p``; none: no step this iteration.
    5. ``w <- w + alpha p``.

    The constants (1.3, 1/4, 3/4, 3/2, 2/3, 0.8, ``armijo=1e-2``, ``cg_decay=0.95``) are
    Martens' (2010) and Martens & Sutskever's (2012). CG runs in float64 whatever the
    network's dtype; the products run in the network's dtype.

    Parameters
    ----------
    damping : float > 0, the initial lambda (kept, adapted, between fits of one network).
    max_cg_iter : int >= 1; cg_tol : float > 0, Martens' epsilon.
    curvature_batch_size : int >= 1, rows of the Gauss-Newton products (capped at the
        gradient batch).
    batch_size : None (full-batch gradient and cost) or int, random rows per iteration.
    cg_decay : float in [0, 1], warm-start factor; armijo : float in (0, 1);
    max_ls : int >= 0, step halvings (x0.8) of the line search.
    seed : int or None, for the batches (default: fit's seed).
    """

    def __init__(self, damping=1.0, max_cg_iter=250, cg_tol=5e-4, curvature_batch_size=5000,
                 batch_size=None, cg_decay=0.95, armijo=1e-2, max_ls=60, seed=None):
        super().__init__()
        o = "HessianFree"
        self.damping = check_real(damping, "damping", owner=o, low=0.0, low_inclusive=False)
        self.max_cg_iter = check_int(max_cg_iter, "max_cg_iter", owner=o, low=1)
        self.cg_tol = check_real(cg_tol, "cg_tol", owner=o, low=0.0, low_inclusive=False)
        self.curvature_batch_size = check_int(curvature_batch_size, "curvature_batch_size",
                                              owner=o, low=1)
        self.batch_size = _check_batch(batch_size, "batch_size", o)
        self.cg_decay = check_real(cg_decay, "cg_decay", owner=o, low=0.0, high=1.0)
        self.armijo = check_real(armijo, "armijo", owner=o, low=0.0, high=1.0,
                                 low_inclusive=False, high_inclusive=False)
        self.max_ls = check_int(max_ls, "max_ls", owner=o, low=0)
        self.seed = check_seed(seed)

    def __repr__(self):
        return (f"HessianFree(damping={self.damping!r}, max_cg_iter={self.max_cg_iter!r}, "
                f"cg_tol={self.cg_tol!r}, curvature_batch_size={self.curvature_batch_size!r}, "
                f"batch_size={self.batch_size!r})")

    @property
    def lambda_(self):
        """The current (adapted) damping, or None before the first fit."""
        return None if self._state is None else self._state["lambda"]

    @staticmethod
    def _cg(A, b, x0, max_iter, tol, run):
        """Martens' CG on A x = b from x0; returns (saved [(i, x, phi)], last x, iterations)."""
        x = x0.copy()
        if x.any():
            r = b - A(x)
            run.n_hvp += 1
            phi = -0.5 * float(x @ (b + r))
            if phi >= 0:  # the warm start is worse than 0: start from 0
                x[:] = 0
                r = b.copy()
                phi = 0.0
        else:
            r = b.copy()
            phi = 0.0
        p = r.copy()
        rr = float(r @ r)
        phis = [phi]
        saved = []
        next_save, j = 1, 0
        i = 0
        while i < max_iter:
            if rr == 0:
                break
            Ap = A(p)
            run.n_hvp += 1
            pAp = float(p @ Ap)
            if not np.isfinite(pAp) or pAp <= 0:
                break  # cannot happen with lambda > 0 and PSD G, except by rounding
            alpha = rr / pAp
            x += alpha * p
            r -= alpha * Ap
            rr_new = float(r @ r)
            p *= rr_new / rr
            p += r
            rr = rr_new
            i += 1
            phi = -0.5 * float(x @ (b + r))
            phis.append(phi)
            if i == next_save:
                saved.append((i, x.copy(), phi))
                while next_save <= i:
                    j += 1
                    next_save = int(math.ceil(1.3 ** j))
            k = max(10, i // 10)
            if i > k and phi < 0 and (phi - phis[i - k]) / phi < k * tol:
                break
        if not saved or saved[-1][0] != i:
            saved.append((i, x.copy(), phi))
        return saved, x, i

    def _fit_network(self, net, X, Y, labels, *, epochs, batch_size, lmbda, validation, shuffle,
                     seed, callbacks, monitor_training, verbose):
        run = _Run(net, X, Y, labels, lmbda, validation, callbacks, monitor_training, verbose,
                   extra=("damping", "cg_iter", "rho", "step"))
        state = self._state_for(net, lambda: {"lambda": self.damping,
                                              "p": np.zeros(net.n_params)})
        rng = _rng_for(self.seed, seed)
        n = X.shape[0]
        full = self.batch_size is None or self.batch_size >= n
        mask = net._weight_mask
        l2 = lmbda / n

        def batch_cost(Xb, Yb, Lb):
            """C on a batch: its mean C0 plus the full objective's L2 term lmbda/(2n)||W||^2."""
            c = net._evaluate(Xb, Yb, Lb, 0.0, False)[0]
            run.n_fev += 1
            if lmbda:
                c += 0.5 * l2 * net._l2_norm2()
            return float(c)

        cached = None  # (cost, acc, g) at the current parameters, full batch
        for it in range(epochs):
            w = net.params.copy()
            if full:
                Xb, Yb, Lb = X, Y, labels
                if cached is None:
                    cached = run.evaluate()
                f0, _, g = cached
            else:
                idx = np.sort(rng.choice(n, self.batch_size, replace=False))
                Xb, Yb, Lb = _take_rows(X, Y, labels, idx)
                c, _, gb = net._evaluate(Xb, Yb, Lb, 0.0, True)
                run.n_fev += 1
                run.n_grad += 1
                g = np.asarray(gb, dtype=np.float64)
                if lmbda:
                    g[mask] += l2 * w[mask]
                    c += 0.5 * l2 * net._l2_norm2()
                f0 = float(c)
            nb = Xb.shape[0]
            mc = min(self.curvature_batch_size, nb)
            if mc < nb:
                cidx = np.sort(rng.choice(nb, mc, replace=False))
                Xc, Yc, Lc = _take_rows(Xb, Yb, Lb, cidx)
            else:
                Xc, Yc, Lc = Xb, Yb, Lb
            # G on the curvature batch carries the full objective's L2 term lmbda/n
            lin = curvature.Linearization(net, Xc, Yc, Lc, lmbda * mc / n, exact=False, cache=True)
            lam = state["lambda"]

            def A(v):
                return lin.gnvp(v) + lam * v

            saved, x_last, n_cg = self._cg(A, -g, self.cg_decay * state["p"], self.max_cg_iter,
                                           self.cg_tol, run)
            state["p"] = x_last
            # CG-iterate backtracking on the gradient batch's cost
            best = None
            for i, x, phi in reversed(saved):
                net.params[:] = w + x.astype(net.dtype)
                c = batch_cost(Xb, Yb, Lb)
                c = c if np.isfinite(c) else np.inf
                if best is None or c < best[0]:
                    best = (c, x, phi)
                else:
                    break
            f_p, p, phi = best
            gp = float(g @ p)
            q = phi - 0.5 * lam * float(p @ p)   # g.p + 1/2 p.G.p
            rho = (f_p - f0) / q if q < 0 and np.isfinite(f_p) else -np.inf
            if rho < 0.25:
                state["lambda"] = lam * 1.5
            elif rho > 0.75:
                state["lambda"] = lam * (2.0 / 3.0)
            # Armijo line search along p
            alpha, f_new = 1.0, f_p
            ok = np.isfinite(f_new) and f_new <= f0 + self.armijo * alpha * gp
            k = 0
            while not ok and k < self.max_ls:
                alpha *= 0.8
                k += 1
                net.params[:] = w + (alpha * p).astype(net.dtype)
                f_new = batch_cost(Xb, Yb, Lb)
                ok = np.isfinite(f_new) and f_new <= f0 + self.armijo * alpha * gp
            if ok:
                net.params[:] = w + (alpha * p).astype(net.dtype)
                cached = None
            else:
                alpha = 0.0
                net.params[:] = w
            if full:
                if cached is None:
                    cached = run.evaluate()
                cost, acc, gnew = cached
                if not np.isfinite(cost):
                    net.params[:] = w
                    raise TrainingDiverged(f"Training diverged in HessianFree iteration {it}: the "
                                           f"cost is {cost}.", epoch=it, step=None,
                                           history=run.history)
                stop = run.record(it, grad_norm=float(np.linalg.norm(gnew)), train=(cost, acc),
                                  good_params=w, damping=lam, cg_iter=n_cg, rho=float(rho),
                                  step=alpha)
            else:
                stop = run.record(it, grad_norm=float(np.linalg.norm(g)), good_params=w,
                                  damping=lam, cg_iter=n_cg, rho=float(rho), step=alpha)
            if stop:
                break
        return run.history


# =========================================================================== scipy methods

class _StopFit(Exception):
    pass


class _ScipyMethod:
    """Full-batch minimization by ``scipy.optimize.minimize(method=..., jac=True)``.

    ``fun(x)`` writes x into ``net.params`` in place (the flat buffer is already the
    optimizer's vector: nothing is packed or unpacked) and returns fastnn's fused
    ``(C, grad C)`` over the training set (float, float64 array). One ``fit`` epoch is one
    iteration of the method (``maxiter = epochs``); the history is recorded by scipy's
    per-iteration ``callback``. A non-finite cost is reported to scipy as +inf (its line
    searches then shorten the step); if the final point is not finite the network takes
    the last finite iterate and ``TrainingDiverged`` is raised.
    """

    method = None
    name = None
    # Hold BLAS to one thread for the whole minimization while fastnn's kernels use more:
    # the method's own vector operations are tiny, and a multi-threaded BLAS call between
    # two evaluations leaves OpenBLAS's worker spinning (about 0.1 s) on the core the next
    # evaluation needs (LBFGS on [784, 100, 10] x 50 000 images: 30 % less time per
    # iteration). BFGS keeps BLAS's threads for its P x P products.
    limit_blas = True

    def __init__(self, gtol=1e-5, **options):
        self.gtol = check_real(gtol, "gtol", owner=self.name, low=0.0)
        self.options = dict(options)

    def reset(self):
        pass

    def __repr__(self):
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"{self.name}(gtol={self.gtol!r}{opts})"

    def _check(self, net):
        pass

    def _scipy_options(self, epochs, n_params):
        opts = {"maxiter": epochs, "gtol": self.gtol}
        opts.update(self.options)
        return opts

    def _fit_network(self, net, X, Y, labels, *, epochs, batch_size, lmbda, validation, shuffle,
                     seed, callbacks, monitor_training, verbose):
        from scipy.optimize import minimize
        self._check(net)
        run = _Run(net, X, Y, labels, lmbda, validation, callbacks, monitor_training, verbose)
        if epochs == 0:
            return run.history
        recent = []   # the last few evaluations: (x, cost, acc, g)
        good = {"x": net.params.astype(np.float64)}

        def fun(x):
            net.params[:] = x
            cost, acc, g = run.evaluate()
            if np.isfinite(cost) and np.all(np.isfinite(g)):
                recent.append((x.copy(), cost, acc, g))
                del recent[:-4]
                return cost, g
            return np.inf, np.zeros_like(g)

        it = [0]

        def callback(xk):
            found = None
            for x, cost, acc, g in reversed(recent):
                if np.array_equal(x, xk):
                    found = (cost, acc, g)
                    break
            net.params[:] = xk
            if found is None:  # not an evaluated point (rare): monitoring pass, not counted
                cost, acc, g = net._evaluate(X, Y, labels, lmbda, True)
                found = (float(cost), acc, np.asarray(g, np.float64))
            cost, acc, g = found
            good["x"] = np.array(xk, dtype=np.float64)
            stop = run.record(it[0], grad_norm=float(np.linalg.norm(g)), train=(cost, acc),
                              good_params=good["x"])
            it[0] += 1
            if stop:
                raise _StopFit

        x0 = net.params.astype(np.float64)
        run.restart_clock()
        try:
            with kernel_blas() if self.limit_blas else blas_limit(None):
                res = minimize(fun, x0, jac=True, method=self.method, callback=callback,
                               options=self._scipy_options(epochs, net.n_params))
            x_final = res.x
            self.result_ = res
        except _StopFit:
            x_final = good["x"]
            self.result_ = None
        net.params[:] = x_final
        if not np.all(np.isfinite(net.params)) or not np.isfinite(
                net._evaluate(X, Y, labels, lmbda, False)[0]):
            net.params[:] = good["x"]
            raise TrainingDiverged(f"{self.name}: the final point is not finite; the network keeps "
                                   f"the last finite iterate.", epoch=it[0], step=None,
                                   history=run.history)
        return run.history


class ConjugateGradient(_ScipyMethod):
    """Nonlinear conjugate gradient (Polak-Ribiere, scipy's ``method="CG"``), full batch.

    Parameters: ``gtol`` (stop when the largest |gradient component| is below it) and any
    further scipy option (``norm``, ``c1``, ``c2``, ...). The iteration limit is fit's epochs.
    """
    method = "CG"
    name = "ConjugateGradient"


class BFGS(_ScipyMethod):
    """BFGS (scipy's ``method="BFGS"``), full batch, with a dense P x P inverse-Hessian estimate.

    scipy's update ``H <- A1 H A2 + rho s s^T`` keeps the P x P estimate and forms the dense
    P x P matrices I, A1, A2 and two products: about 7 P^2 float64 at its peak and two
    P x P matrix products (O(P^3) time) per iteration. It refuses
    (``CurvatureMemoryError``) networks for which 7 P^2 float64 would exceed a quarter of the
    available memory (or ``max_bytes``); use ``LBFGS`` then. Options: ``gtol`` and further
    scipy options.
    """
    method = "BFGS"
    name = "BFGS"
    limit_blas = False

    def __init__(self, gtol=1e-5, max_bytes=None, **options):
        super().__init__(gtol, **options)
        self.max_bytes = max_bytes

    def _check(self, net):
        P = net.n_params
        curvature.check_memory(
            7 * P * P * 8,
            f"BFGS on this network ({P} parameters: a {P} x {P} float64 inverse-Hessian "
            f"estimate and scipy's dense update)",
            "Use fastnn.LBFGS (limited memory: a few vectors of length P) instead.",
            self.max_bytes)


class LBFGS(_ScipyMethod):
    """Limited-memory BFGS (scipy's ``method="L-BFGS-B"``, no bounds), full batch.

    Parameters: ``m`` (the number of correction pairs kept, scipy's ``maxcor``), ``gtol``,
    ``ftol`` (relative cost reduction to stop), further scipy options. The iteration limit
    is fit's epochs; the evaluation limit ``maxfun`` is ``max(15000, 20 epochs)``.
    """
    method = "L-BFGS-B"
    name = "LBFGS"

    def __init__(self, m=10, gtol=1e-5, ftol=2.2e-9, **options):
        super().__init__(gtol, **options)
        self.m = check_int(m, "m", owner="LBFGS", low=1)
        self.ftol = check_real(ftol, "ftol", owner="LBFGS", low=0.0)

    def __repr__(self):
        return f"LBFGS(m={self.m!r}, gtol={self.gtol!r}, ftol={self.ftol!r})"

    def _scipy_options(self, epochs, n_params):
        opts = {"maxiter": epochs, "gtol": self.gtol, "ftol": self.ftol, "maxcor": self.m,
                "maxfun": max(15000, 20 * epochs)}
        opts.update(self.options)
        return opts
