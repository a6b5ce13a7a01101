"""Exact curvature of the cost: Hessian-vector products, Gauss-Newton products, full Hessians.

All products are of the mean cost over the n rows given, with the L2 term of DESIGN.md::

    C(w) = C0(w) + lmbda/(2n) sum_l ||W_l||^2,   C0 = (1/n) sum_x C0_x

so ``H = (1/n) sum_x d2C0_x/dw2 + (lmbda/n) diag(mask)`` (mask = 1 on weights, 0 on biases).

Hessian-vector products: Pearlmutter's R-operator
--------------------------------------------------
``R{q} = d/dr q(w + r v) |_{r=0}`` applied to every quantity of one forward and one
backward pass gives ``R{grad} = H v`` exactly (no finite difference), at the cost of a
few gradient evaluations (Pearlmutter 1994, "Fast exact multiplication by the Hessian").
With samples as rows, ``z_l = a_l W_l^T + b_l``, ``a_{l+1} = f_l(z_l)``, ``a_0 = X`` and
``v = (V_l, c_l)`` split like the parameters:

R-forward::

    R{a_0} = 0
    R{z_l} = R{a_l} W_l^T + a_l V_l^T + c_l
    R{a_{l+1}} = f_l'(z_l) * R{z_l}                    (element-wise activations)
    R{a_{l+1}} = a * (R{z_l} - <a, R{z_l}>)             (softmax, row-wise)

backward (per-sample deltas ``d_l = dC0_x/dz_l``) and R-backward::

    d_{l-1} = (d_l W_l) * f'(z_{l-1})
    R{d_{l-1}} = (R{d_l} W_l + d_l V_l) * f'(z_{l-1}) + (d_l W_l) * f''(z_{l-1}) * R{z_{l-1}}
    R{dC/dW_l} = (1/n) sum_x [R{d_l}^T a_l + d_l^T R{a_l}]
    R{dC/db_l} = (1/n) sum_x R{d_l}

with ``f''`` written in terms of the output ``a`` as the kernels do: sigmoid
``a(1-a)(1-2a)``, tanh ``-2a(1-a^2)``, relu and identity 0 (relu's kink is a set of measure
zero; there the product is the one of the linear piece the forward pass took).

The output delta and its R-image for every output/cost pair (rows of targets ``y``,
``s = sum_j y_j`` which is 1 for labels, ``r = a - y``)::

    sigmoid + cross-entropy:   d = a - y                R{d} = R{a}
    softmax + log-likelihood:  d = s a - y              R{d} = s R{a}
    quadratic, element-wise f: d = r * f'(z)            R{d} = f'(z) R{a} + r * f''(z) * R{z}
    quadratic, softmax:        d = a * (r - <r, a>)     R{d} = R{a} * (r - <r, a>)
                                                               + a * (R{a} - <R{a}, a> - <r, R{a}>)

Generalized Gauss-Newton products (Schraudolph 2002; Martens 2010)
------------------------------------------------------------------
``G v = (1/n) sum_x J_x^T H_L J_x v + (lmbda/n) mask * v`` where ``J_x`` is the Jacobian of
the network's output with respect to the parameters and ``H_L`` the Hessian of ``C0_x``
with respect to that output; it drops the second-order terms of the network itself, so
G is positive semi-definite whenever H_L is. For the matching pairs the output is the
pre-activation ``z_L`` and the loss is convex in it::

    sigmoid + cross-entropy:   H_L = diag(a (1 - a))
    softmax + log-likelihood:  H_L = s (diag(a) - a a^T)      (PSD for non-negative targets)
    identity + quadratic:      H_L = I

for the other quadratic pairs the output nonlinearity is part of J and H_L = I on ``a``:
``J^T J`` with ``R{d} = f'(z)^2 R{z}`` (element-wise) or ``S S R{z}`` (softmax, with
``S = diag(a) - a a^T``). ``J v`` is the R-forward pass (exact), ``J^T`` the backward pass
without the second-order terms.

Implementation
--------------
NumPy, vectorized over the rows in chunks of at most ``CHUNK_ROWS`` rows (bounded memory),
and over several vectors at once (the full Hessian takes blocks of unit vectors), with every
product written as one large GEMM per layer. Products run in the network's dtype; the sums
over chunks accumulate in float64. ``Linearization`` keeps the forward pass of a fixed
batch (when it fits in ``CACHE_BYTES``), so repeated products - CG iterations, Hessian
columns - cost only the R-passes. The full Hessian gets the columns of the first layer's
weights, usually most of P, from one R-pass per hidden unit (``_hessian`` explains why
that is exact), and the others from blocks of unit vectors whose R-forward is a scatter.
"""
import numpy as np

from fastnn._validation import check_real

__all__ = ["hessian_vector_product", "gauss_newton_vector_product", "hessian", "Linearization",
           "CurvatureMemoryError", "memory_limit", "estimate_hessian_bytes"]

CHUNK_ROWS = 4096                 # rows per chunk of a single product
BLOCK_BYTES = 16 << 20            # R-quantities of one piece of rows of a multi-vector product
CACHE_BYTES = 256 << 20           # the forward pass of a Linearization is kept below this
_FALLBACK_AVAILABLE = 8 << 30     # assumed available RAM when /proc/meminfo is unreadable
_HESSIAN_BLOCK = 32               # unit vectors per block when assembling a full Hessian
_FIRST_LAYER_BYTES = 64 << 20     # the first layer's Hessian columns are built in groups this big


class CurvatureMemoryError(MemoryError, ValueError):
    """A P x P matrix (Hessian, Newton's factorization, BFGS's inverse Hessian estimate)
    would not fit comfortably in memory. Both a MemoryError and a ValueError."""


def _available_bytes():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_limit():
    """Bytes a P x P matrix (plus its workspace) may take: a quarter of the available RAM
    (``MemAvailable`` of /proc/meminfo), or 2 GiB when that cannot be read."""
    avail = _available_bytes()
    return (2 << 30) if avail is None else avail // 4


def _fmt_bytes(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def check_memory(nbytes, what, suggestion, max_bytes=None):
    """Raise CurvatureMemoryError when ``nbytes`` exceeds ``max_bytes`` (default
    ``memory_limit()``)."""
    limit = memory_limit() if max_bytes is None else int(max_bytes)
    if nbytes > limit:
        why = ("a quarter of the available memory" if max_bytes is None else "max_bytes")
        raise CurvatureMemoryError(
            f"{what} needs about {_fmt_bytes(nbytes)}, more than the {_fmt_bytes(limit)} allowed "
            f"({why}). {suggestion}")


def estimate_hessian_bytes(net, n_rows):
    """Bytes ``hessian(net, X)`` would use for X of ``n_rows`` rows: the (P, P) result in the
    network's dtype, plus the first layer's column group, one block of columns, the R-pass
    workspace and the cached forward pass."""
    P = net.n_params
    item = net.dtype.itemsize
    block = min(P, _HESSIAN_BLOCK)
    width = sum(net.sizes)
    rows = min(n_rows, CHUNK_ROWS)
    cache = min(CACHE_BYTES, n_rows * 6 * width * item)
    first = min(_FIRST_LAYER_BYTES, net.sizes[1] * (net.sizes[0] + 1) * P * 8)
    return (P * P * item + first + 2 * block * P * 8 + 3 * BLOCK_BYTES
            + rows * width * item * 6 + cache)


# --------------------------------------------------------------------------- activations

def _act(name, z):
    if name == "sigmoid":
        from scipy.special import expit
        return expit(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0, out=z)
    if name == "softmax":
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z
    return z  # identity


def _fprime(name, a):
    """f'(z) from a = f(z); None for identity (f' = 1) and softmax (a Jacobian)."""
    if name == "sigmoid":
        return a * (1 - a)
    if name == "tanh":
        return 1 - a * a
    if name == "relu":
        return (a > 0).astype(a.dtype)
    return None


def _fsecond(name, a, fp):
    """f''(z) from a and f'; None where it vanishes (relu, identity)."""
    if name == "sigmoid":
        return fp * (1 - 2 * a)
    if name == "tanh":
        return -2 * a * fp
    return None


class _State:
    """The forward (and, for exact products, backward) pass of one chunk of rows."""
    __slots__ = ("m", "acts", "fp", "deltas", "bfpp", "s", "r", "rc", "rfpp")


def _slice_state(st, i, j):
    def cut(x):
        if x is None:
            return None
        if isinstance(x, list):
            return [cut(y) for y in x]
        return x[i:j]
    out = _State()
    out.m = j - i
    for name in ("acts", "fp", "deltas", "bfpp", "s", "r", "rc", "rfpp"):
        setattr(out, name, cut(getattr(st, name)))
    return out


class Linearization:
    """The network at fixed parameters on fixed data, for repeated curvature products.

    ``Linearization(net, X, Y, labels, lmbda)`` takes validated arrays (as
    ``net._check_Xy`` returns) and a snapshot of ``net.params``; later changes to the
    network do not affect it. ``hvp(V)`` and ``gnvp(V)`` multiply a vector of shape
    (P,) or a block of vectors of shape (k, P) by the exact Hessian H or the Gauss-Newton
    matrix G of the mean cost (with L2), returning float64 of the same shape.
    ``exact=False`` keeps only what Gauss-Newton products need (no deltas, no targets
    beyond the log-likelihood's row sums); ``cache=False`` recomputes the forward pass
    for every product instead of keeping it (it is kept only below CACHE_BYTES anyway).
    """

    def __init__(self, net, X, Y, labels, lmbda=0.0, *, exact=True, cache=True):
        self.net = net
        self.sizes = net.sizes
        self.names = net.activations
        self.cost = net.cost
        self.output = net.output
        self.dtype = net.dtype
        self.P = net.n_params
        self.lmbda = float(lmbda)
        self.exact = bool(exact)
        self.X, self.Y, self.labels = X, Y, labels
        self.n = X.shape[0]
        self.params = net.params.copy()
        self.layers = []   # (W, b, offW, offb)
        off = 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            W = self.params[off:off + n_out * n_in].reshape(n_out, n_in)
            b = self.params[off + n_out * n_in:off + n_out * (n_in + 1)]
            self.layers.append((W, b, off, off + n_out * n_in))
            off += n_out * (n_in + 1)
        self.mask = net._weight_mask
        self._states = None
        width = sum(self.sizes[1:])
        per_row = 6 * width * self.dtype.itemsize  # acts, f', f'', deltas, ... per row
        if cache and self.n * per_row <= CACHE_BYTES:
            self._states = {}

    # ------------------------------------------------------------------ forward
    def _rows(self, k):
        """Rows per piece of a product with k vectors: at most CHUNK_ROWS, fewer when the
        k vectors' R-quantities would exceed BLOCK_BYTES."""
        per_row = 3 * k * sum(self.sizes[1:]) * self.dtype.itemsize
        return int(max(16, min(CHUNK_ROWS, BLOCK_BYTES // max(per_row, 1))))

    def _pieces(self, k, rows=None):
        """The forward state of every piece of rows: each CHUNK_ROWS chunk's state (cached
        or computed), cut into pieces of ``rows`` (default ``_rows(k)``) rows."""
        rows = self._rows(k) if rows is None else rows
        for s in range(0, self.n, CHUNK_ROWS):
            e = min(self.n, s + CHUNK_ROWS)
            st = self._state(s, e)
            if rows >= st.m:
                yield st
            else:
                for i in range(0, st.m, rows):
                    yield _slice_state(st, i, min(st.m, i + rows))

    def _state(self, s, e):
        if self._states is not None:
            st = self._states.get(s)
            if st is None:
                st = self._states[s] = self._forward(s, e)
            return st
        return self._forward(s, e)

    def _forward(self, s, e):
        st = _State()
        X = self.X[s:e]
        st.m = e - s
        acts, fps = [X], []
        fpp = []
        L = len(self.layers)
        for l, (W, b, _, _) in enumerate(self.layers):
            z = acts[-1] @ W.T
            z += b
            name = self.names[l]
            a = _act(name, z)
            acts.append(a)
            fp = _fprime(name, a)
            fps.append(fp)
            fpp.append(_fsecond(name, a, fp) if (self.exact and l < L - 1 or
                                                 self.exact and self.cost == "quadratic") else None)
        st.acts, st.fp = acts, fps
        st.s = st.r = st.rc = st.rfpp = None
        a = acts[-1]
        need_T = self.exact or self.cost == "log-likelihood"
        T = self.net._targets(self.Y[s:e], self.labels[s:e]) if need_T else None
        if self.cost == "log-likelihood" and self.Y.shape[0]:
            st.s = T.sum(axis=1, keepdims=True)  # 1 for one-hot rows, kept general
        st.deltas = st.bfpp = None
        if not self.exact:
            return st
        # output delta d_L (per sample, not divided by n) and what R{d_L} needs
        if self.cost == "cross-entropy":
            d = a - T
        elif self.cost == "log-likelihood":
            d = (a if st.s is None else st.s * a) - T
        else:
            r = a - T
            st.r = r
            if self.output == "softmax":
                st.rc = np.sum(r * a, axis=1, keepdims=True)
                d = a * (r - st.rc)
            elif self.output == "identity":
                d = r
            else:
                d = r * fps[-1]
                if fpp[-1] is not None:
                    st.rfpp = r * fpp[-1]
        deltas = [None] * L
        bfpp = [None] * L
        deltas[L - 1] = d
        for l in range(L - 1, 0, -1):
            back = deltas[l] @ self.layers[l][0]       # d_l W_l
            if fpp[l - 1] is not None:
                bfpp[l - 1] = back * fpp[l - 1]         # (d_l W_l) * f''(z_{l-1})
            if l > 1:  # d_0 itself is never used: R{dC/dW_0} has no d_0 R{a_0} term
                if fps[l - 1] is not None:
                    back *= fps[l - 1]
                deltas[l - 1] = back
        st.deltas, st.bfpp = deltas, bfpp
        return st

    # ------------------------------------------------------------------ products
    def hvp(self, V):
        """H V for V of shape (P,) or (k, P); float64 of the same shape."""
        if not self.exact:
            raise RuntimeError("this Linearization was built with exact=False (Gauss-Newton only)")
        return self._product(V, gn=False)

    def gnvp(self, V):
        """G V for V of shape (P,) or (k, P); float64 of the same shape."""
        return self._product(V, gn=True)

    def _split(self, V, basis=None):
        """Per layer: the direction's (VW, Vb) and what the passes use of them. With
        ``basis=(j0, j1)`` the rows of V are the unit vectors e_j0 .. e_(j1-1), and the
        products with them become scatters (no GEMM with a mostly-zero matrix)."""
        out = []
        K = V.shape[0]
        for (W, b, offW, offb), n_in, n_out in zip(self.layers, self.sizes[:-1], self.sizes[1:]):
            part = {"VW": V[:, offW:offb].reshape(K, n_out, n_in), "Vb": V[:, offb:offb + n_out]}
            if basis is not None:
                j0, j1 = basis
                cw = np.arange(max(j0, offW), min(j1, offb))
                cb = np.arange(max(j0, offb), min(j1, offb + n_out))
                part["unit_w"] = (cw - j0, (cw - offW) // n_in, (cw - offW) % n_in)
                part["unit_b"] = (cb - j0, cb - offb)
                part["w_nz"], part["b_nz"] = cw.size > 0, cb.size > 0
            else:
                part["w_nz"] = bool(np.any(part["VW"]))
                part["b_nz"] = bool(np.any(part["Vb"]))
            out.append(part)
        return out

    def _product(self, V, gn, basis=None):
        one = V.ndim == 1
        V = np.ascontiguousarray(np.atleast_2d(V), dtype=self.dtype)
        K = V.shape[0]
        acc = np.zeros((K, self.P), dtype=np.float64)
        parts = self._split(V, basis)
        for st in self._pieces(K):
            self._chunk_product(st, parts, K, gn, acc)
        acc /= self.n
        if self.lmbda:
            acc[:, self.mask] += (self.lmbda / self.n) * V[:, self.mask]
        return acc[0] if one else acc

    def _chunk_product(self, st, parts, K, gn, acc, Xw=None):
        """Add the sums over this piece's rows of R{dC0_x/dw} (or the Gauss-Newton image)
        to acc (K, P). R-quantities have shape (m, K, width): every product with W or V is
        one GEMM over m*K rows, and the weight gradients one GEMM over the m rows with a
        transposed operand (no copies).

        With row weights ``Xw`` (m, J), acc has shape (J, K, P) and receives the weighted
        sums ``sum_x Xw[x, j] * (row x's term)`` instead (see ``_hessian``)."""
        layers, names, sizes = self.layers, self.names, self.sizes
        L = len(layers)
        m = st.m
        # ---- R-forward: R{z_l}, R{a_{l+1}}
        Rz, Ra = [None] * L, [None] * L
        ra_in = None
        for l in range(L):
            W = layers[l][0]
            part = parts[l]
            n_in, n_out = sizes[l], sizes[l + 1]
            rz = None
            if ra_in is not None:
                rz = (ra_in.reshape(m * K, n_in) @ W.T).reshape(m, K, n_out)
            if part["w_nz"] or part["b_nz"]:
                if rz is None:
                    rz = np.zeros((m, K, n_out), dtype=self.dtype)
                if "unit_w" in part:
                    kw, iw, jw = part["unit_w"]
                    if kw.size:
                        rz[:, kw, iw] += st.acts[l][:, jw]
                    kb, ib = part["unit_b"]
                    if kb.size:
                        rz[:, kb, ib] += 1
                else:
                    if part["w_nz"]:
                        VWflat = part["VW"].reshape(K * n_out, n_in)
                        rz += (st.acts[l] @ VWflat.T).reshape(m, K, n_out)   # one GEMM
                    if part["b_nz"]:
                        rz += part["Vb"]
            if rz is None:  # no direction reaches this layer yet
                continue
            Rz[l] = rz
            name = names[l]
            if name == "softmax":
                a = st.acts[l + 1][:, None, :]
                ra = a * (rz - np.sum(a * rz, axis=2, keepdims=True))
            elif st.fp[l] is None:  # identity
                ra = rz
            else:
                ra = st.fp[l][:, None, :] * rz
            Ra[l] = ra
            ra_in = ra
        # ---- output: R{d_L} (Hessian) or H_L J v (Gauss-Newton)
        rz, ra = Rz[L - 1], Ra[L - 1]
        a = st.acts[L][:, None, :]
        if self.cost == "cross-entropy":
            rd = ra
        elif self.cost == "log-likelihood":
            rd = ra if st.s is None else st.s[:, None, :] * ra
        elif self.output == "softmax":
            if gn:
                rd = a * (ra - np.sum(a * ra, axis=2, keepdims=True))
            else:
                r = st.r[:, None, :]
                rd = ra * (r - st.rc[:, None, :]) + a * (ra - np.sum(ra * a, axis=2, keepdims=True)
                                                         - np.sum(r * ra, axis=2, keepdims=True))
        elif st.fp[L - 1] is None:  # identity
            rd = ra
        else:
            rd = st.fp[L - 1][:, None, :] * ra
            if not gn and st.rfpp is not None:
                rd += st.rfpp[:, None, :] * rz
        # ---- R-backward
        for l in range(L - 1, -1, -1):
            W, b, offW, offb = layers[l]
            part = parts[l]
            n_in, n_out = sizes[l], sizes[l + 1]
            a_in = st.acts[l]
            second = not gn and l > 0 and Ra[l - 1] is not None
            if Xw is not None:
                XwT = Xw.T
                J = XwT.shape[0]
                for k in range(K):
                    Z = None
                    if rd is not None:
                        Z = rd[:, k, :, None] * a_in[:, None, :]
                    if second:
                        u = st.deltas[l][:, :, None] * Ra[l - 1][:, k, None, :]
                        Z = u if Z is None else Z.__iadd__(u)
                    if Z is not None:
                        acc[:, k, offW:offb] += XwT @ Z.reshape(m, n_out * n_in)
                if rd is not None:
                    acc[:, :, offb:offb + n_out] += (XwT @ rd.reshape(m, K * n_out)).reshape(
                        J, K, n_out)
            else:
                if rd is not None:
                    gW = rd.reshape(m, K * n_out).T @ a_in                 # (K * n_out, n_in)
                    acc[:, offW:offb] += gW.reshape(K, n_out * n_in)
                    acc[:, offb:offb + n_out] += rd.sum(axis=0)
                if second:
                    gW2 = st.deltas[l].T @ Ra[l - 1].reshape(m, K * n_in)  # (n_out, K * n_in)
                    acc[:, offW:offb] += gW2.reshape(n_out, K, n_in).transpose(1, 0, 2).reshape(
                        K, n_out * n_in)
            if l == 0:
                break
            # R{d_{l-1}}
            t = None
            if rd is not None:
                t = (rd.reshape(m * K, n_out) @ W).reshape(m, K, n_in)
            if not gn and part["w_nz"]:
                d = st.deltas[l]
                if t is None:
                    t = np.zeros((m, K, n_in), dtype=self.dtype)
                if "unit_w" in part:
                    kw, iw, jw = part["unit_w"]
                    t[:, kw, jw] += d[:, iw]
                else:
                    VWt = part["VW"].transpose(1, 0, 2).reshape(n_out, K * n_in)
                    t += (d @ VWt).reshape(m, K, n_in)
            if t is not None and st.fp[l - 1] is not None:
                t *= st.fp[l - 1][:, None, :]
            if not gn and st.bfpp[l - 1] is not None and Rz[l - 1] is not None:
                u = st.bfpp[l - 1][:, None, :] * Rz[l - 1]
                t = u if t is None else t.__iadd__(u)
            rd = t


# --------------------------------------------------------------------------- public API

def _check_v(net, v, name="v"):
    if hasattr(v, "toarray") and not isinstance(v, np.ndarray):
        raise TypeError(f"The {name!r} parameter must be a dense array. Got {type(v).__name__}.")
    arr = np.asarray(v)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
            or np.iscomplexobj(arr):
        raise TypeError(f"The {name!r} parameter must hold real numbers. Got an array of dtype "
                        f"{arr.dtype} instead.")
    P = net.n_params
    if arr.shape != (P,):
        raise ValueError(f"The {name!r} parameter must be a flat vector in the params layout, of "
                         f"shape ({P},) (net.n_params). Got an array of shape {arr.shape} instead.")
    arr = np.ascontiguousarray(arr, dtype=net.dtype)
    if not np.isfinite(arr).all():
        raise ValueError(f"The {name!r} parameter must be finite; it holds NaN or inf "
                         f"(first at index {int(np.argmin(np.isfinite(arr)))}).")
    return arr


def _prepare(net, X, y, lmbda):
    lmbda = check_real(lmbda, "lmbda", low=0.0)
    X, Y, labels = net._check_Xy(X, y)
    return X, Y, labels, lmbda


def hessian_vector_product(net, X, y, v, lmbda=0.0):
    """H v: the exact Hessian of the mean cost C over the rows of X (with the L2 term)
    times the flat vector v (params layout), by Pearlmutter's R-operator.

    Returns an array of shape (P,) in the network's dtype. See the module docstring for
    the equations; cost: one forward and about two backward passes' worth of GEMMs.
    """
    X, Y, labels, lmbda = _prepare(net, X, y, lmbda)
    v = _check_v(net, v)
    lin = Linearization(net, X, Y, labels, lmbda, exact=True, cache=False)
    return lin.hvp(v).astype(net.dtype, copy=False)


def gauss_newton_vector_product(net, X, y, v, lmbda=0.0):
    """G v: the generalized Gauss-Newton matrix (Schraudolph 2002, Martens 2010) of the
    mean cost, plus (lmbda/n) on the weights, times v. Positive semi-definite by
    construction. Returns shape (P,) in the network's dtype."""
    X, Y, labels, lmbda = _prepare(net, X, y, lmbda)
    v = _check_v(net, v)
    lin = Linearization(net, X, Y, labels, lmbda, exact=False, cache=False)
    return lin.gnvp(v).astype(net.dtype, copy=False)


def hessian(net, X, y, lmbda=0.0, *, max_bytes=None):
    """The full (P, P) Hessian of the mean cost (with L2), in the network's dtype.

    Built from exact R-operator products, never from finite differences: the first
    layer's columns from one R-pass per hidden unit weighted by the inputs, the others
    from blocks of unit vectors through one multi-vector pass (see ``_hessian``); then
    symmetrized (the products agree with their transposes to rounding; the mean of the
    two is returned). About 0.3 s for [64, 16, 10] (P = 1210) on 1400 rows. Before allocating,
    the memory is estimated (``estimate_hessian_bytes``) and a ``CurvatureMemoryError``
    (a MemoryError and a ValueError) is raised when it exceeds ``max_bytes`` (default:
    a quarter of the available RAM, see ``memory_limit``).
    """
    X, Y, labels, lmbda = _prepare(net, X, y, lmbda)
    P = net.n_params
    need = estimate_hessian_bytes(net, X.shape[0])
    check_memory(need, f"The full Hessian of this network (P = {P} parameters: a {P} x {P} "
                       f"matrix of {net.dtype.name})",
                 "Use hessian_vector_product (exact Hv products without forming H) or the "
                 "fastnn.HessianFree optimizer instead.", max_bytes)
    return _hessian(Linearization(net, X, Y, labels, lmbda, exact=True, cache=True), net.dtype)


def _hessian(lin, dtype, gn=False):
    """The (P, P) matrix of H (or G) of a Linearization, in ``dtype``, symmetrized.

    The columns of the first layer (weights W_0 and biases b_0) come from one R-pass per
    hidden unit k: the direction e_{b_0[k]} gives ``R{z_0} = e_k`` on every row, the
    direction e_{W_0[k, j]} gives ``R{z_0} = x_j e_k``, and every later R-quantity is linear
    per row in ``R{z_0}`` (no direction reaches deeper layers' V terms), so column
    ``W_0[k, j]`` is the sum over rows of ``x_j`` times row x's term of column ``b_0[k]``:
    one GEMM with ``[X, 1]^T`` per unit and layer (``_chunk_product`` with row weights). The
    other columns come from blocks of unit vectors. Then L2 (``lmbda/n`` on the weights'
    diagonal) and an in-place symmetrization.
    """
    P = lin.P
    H = np.empty((P, P), dtype=dtype)
    W0, _, offW0, offb0 = lin.layers[0]
    n1, n0 = W0.shape
    # ---- first layer: groups of hidden units, weighted by [X, 1]
    item = lin.dtype.itemsize
    group = max(1, min(n1, _FIRST_LAYER_BYTES // max(1, (n0 + 1) * P * 8)))
    widest = max(o * i for o, i in zip(lin.sizes[1:], lin.sizes[:-1]))
    rows = int(max(16, min(CHUNK_ROWS, BLOCK_BYTES // max(1, widest * item + 3 * group * sum(
        lin.sizes[1:]) * item))))
    for k0 in range(0, n1, group):
        k1 = min(n1, k0 + group)
        K = k1 - k0
        E = np.zeros((K, P), dtype=lin.dtype)
        E[np.arange(K), offb0 + np.arange(k0, k1)] = 1
        parts = lin._split(E, basis=(offb0 + k0, offb0 + k1))
        acc = np.zeros((n0 + 1, K, P), dtype=np.float64)
        for st in lin._pieces(K, rows):
            Xw = np.empty((st.m, n0 + 1), dtype=lin.dtype)
            Xw[:, :n0] = st.acts[0]
            Xw[:, n0] = 1
            lin._chunk_product(st, parts, K, gn, acc, Xw=Xw)
        acc /= lin.n
        for k in range(K):
            H[:, offW0 + (k0 + k) * n0:offW0 + (k0 + k + 1) * n0] = acc[:n0, k, :].T
            H[:, offb0 + k0 + k] = acc[n0, k, :]
    if lin.lmbda:
        idx = np.arange(offW0, offb0)
        H[idx, idx] += lin.lmbda / lin.n
    # ---- the other layers: blocks of unit vectors, never straddling a layer's weights and
    # biases (the scatters then touch one layer; the R-forward starts there)
    bounds = sorted({offb0 + n1, P} | {o for (_, _, offW, offb) in lin.layers[1:]
                                        for o in (offW, offb)})
    blocks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        blocks += [(j, min(hi, j + _HESSIAN_BLOCK)) for j in range(lo, hi, _HESSIAN_BLOCK)]
    for j0, j1 in blocks:
        E = np.zeros((j1 - j0, P), dtype=lin.dtype)
        E[np.arange(j1 - j0), np.arange(j0, j1)] = 1
        # row i of the product is column j0 + i
        H[:, j0:j1] = lin._product(E, gn=gn, basis=(j0, j1)).T
    # symmetrize in place, block by block (no P x P temporary)
    k = _HESSIAN_BLOCK
    for i0 in range(0, P, k):
        i1 = min(P, i0 + k)
        for j0 in range(i0, P, k):
            j1 = min(P, j0 + k)
            avg = 0.5 * (H[i0:i1, j0:j1].astype(np.float64) + H[j0:j1, i0:i1].T)
            H[i0:i1, j0:j1] = avg
            H[j0:j1, i0:i1] = avg.T
    return H
