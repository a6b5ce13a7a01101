"""The training loop: epochs of mini-batch steps, monitoring and callbacks.

Each epoch draws a permutation of the samples from a NumPy Generator seeded by
``seed`` (the same one for both engines), then runs the mini-batch steps in the
kernel (``fastnn._core.train_steps``): gather the rows, forward, backward, one
fused update. The last partial batch is trained. Python is entered once per
epoch, or every ``progress_every`` samples when a callback asks for progress.

If a step makes a parameter non-finite, the epoch is replayed from its start
up to the step before (the kernels are deterministic), so the network and the
optimizer keep the state of the last finite step, and ``TrainingDiverged`` is
raised with the history so far.
"""
import time

import numpy as np

from fastnn import reference
from fastnn._kernels import _core
from fastnn._memory import aligned_empty
from fastnn._validation import check_finite, check_int, check_real, check_seed
from fastnn.optimizers import SGD, Optimizer
from fastnn.threads import blas_limit, get_num_threads


class TrainingDiverged(FloatingPointError):
    """A step made the parameters non-finite (or the monitored cost is not finite).

    The network keeps its parameters of the last finite step; ``history``
    holds the epochs completed before.
    """

    def __init__(self, message, *, epoch, step, history):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.history = history


class History:
    """Per-epoch record of a ``fit``: lists indexed by epoch.

    Keys: ``epoch``, ``train_cost``, ``train_accuracy``, ``val_cost``,
    ``val_accuracy`` (None where not monitored), ``seconds`` (training time of
    the epoch, monitoring excluded).
    """

    KEYS = ("epoch", "train_cost", "train_accuracy", "val_cost", "val_accuracy", "seconds")

    def __init__(self, extra=()):
        """``extra``: further per-epoch series (e.g. a second-order optimizer's
        ``grad_norm``, ``n_fev``, ``n_hvp``), recorded like the standard ones."""
        self.keys = self.KEYS + tuple(k for k in extra if k not in self.KEYS)
        for k in self.keys:
            setattr(self, k, [])
        self.stopped_early = False

    def _append(self, **row):
        for k in self.keys:
            getattr(self, k).append(row.get(k))

    def __getitem__(self, key):
        if key not in self.keys:
            raise KeyError(f"{key!r}; History keys are {self.keys}")
        return getattr(self, key)

    def __len__(self):
        return len(self.epoch)

    def as_dict(self):
        return {k: list(getattr(self, k)) for k in self.keys}

    def __repr__(self):
        return f"History(epochs={len(self)}, last={ {k: self[k][-1] for k in self.keys} if len(self) else None})"


class Callback:
    """Base class for fit callbacks; override what you need.

    ``on_epoch_end(history)`` runs after every epoch; return True to stop.
    ``on_progress(epoch, samples_done, n_samples)`` runs within an epoch every
    ``progress_every`` samples (only if overridden, so the loop pays nothing
    otherwise). A plain function is taken as ``on_epoch_end``.
    """

    def on_epoch_end(self, history):
        return False

    def on_progress(self, epoch, samples_done, n_samples):
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, monitor="val_accuracy", patience=10, min_delta=0.0):
        if monitor not in History.KEYS[1:5]:
            raise ValueError(f"The 'monitor' parameter of EarlyStopping must be one of "
                             f"{History.KEYS[1:5]}. Got {monitor!r} instead.")
        self.monitor = monitor
        self.patience = check_int(patience, "patience", owner="EarlyStopping", low=1)
        self.min_delta = check_real(min_delta, "min_delta", owner="EarlyStopping", low=0.0)
        self._best, self._wait = None, 0

    def on_epoch_end(self, history):
        value = history[self.monitor][-1]
        if value is None:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this fit does not record "
                             f"(pass validation_data / monitor_training=True).")
        better = (value > self._best + self.min_delta if "accuracy" in self.monitor
                  else value < self._best - self.min_delta) if self._best is not None else True
        if better:
            self._best, self._wait = value, 0
            return False
        self._wait += 1
        return self._wait >= self.patience


def _split_callbacks(callbacks):
    if callbacks is None:
        callbacks = ()
    if callable(callbacks) or isinstance(callbacks, Callback):
        callbacks = (callbacks,)
    ends, progress = [], []
    for cb in callbacks:
        if isinstance(cb, Callback) or hasattr(cb, "on_epoch_end") or hasattr(cb, "on_progress"):
            if hasattr(cb, "on_epoch_end"):
                ends.append(cb.on_epoch_end)
            op = getattr(type(cb), "on_progress", None)
            if op is not None and op is not Callback.on_progress:
                progress.append(cb.on_progress)
        elif callable(cb):
            ends.append(cb)
        else:
            raise TypeError(f"The 'callbacks' parameter must hold callables or Callback objects. "
                            f"Got {cb!r} instead.")
    return ends, progress


# Largest per-step matrix product (multiply-adds) for which "auto" runs BLAS on one
# thread: below it, waking a second BLAS thread for every product of every step costs
# more than it saves, and on a busy machine it can cost 5-10x (measured with
# benchmarks/compare.py on this project's 2-core machines: batch 64-128 epochs of
# [784, 100, 10] ran 2-8x faster on one thread, NumPy's as well as fastnn's).
AUTO_SINGLE_THREAD_MACS = 1 << 24


def resolve_blas_threads(net, batch_size, blas_threads):
    """The BLAS thread limit for training ``net`` with this batch size.

    "auto": 1 while fastnn's kernels run more than one thread themselves
    (``fastnn.set_num_threads``: they split each product between their
    threads, so BLAS must not add its own); else 1 when the largest product
    of a step (batch x fan-in x fan-out) is below ``AUTO_SINGLE_THREAD_MACS``,
    and None (BLAS's own setting) above. None: leave BLAS alone; an int >= 1:
    that many threads.
    """
    if blas_threads == "auto":
        if get_num_threads() > 1:
            return 1
        largest = max(batch_size * a * b for a, b in zip(net.sizes[:-1], net.sizes[1:]))
        return 1 if largest < AUTO_SINGLE_THREAD_MACS else None
    if blas_threads is None:
        return None
    return check_int(blas_threads, "blas_threads", low=1)


class Trainer:
    """Mini-batch epochs on validated arrays, for ``fit`` and the facades.

    Holds the network, the training arrays, the gradient buffer, the workspace
    (one batch) and the optimizer's state, so an epoch only needs its
    permutation: ``run_epoch(perm)`` trains on the batches
    ``perm[0:b], perm[b:2b], ...`` (the last one partial) in the kernels, or in
    the NumPy reference with ``engine="numpy"``.

    ``l2_scale`` sets the L2 term of the gradient: ``"n"`` (the book's) uses
    ``(lmbda / n) W`` with n = len(X); ``"batch"`` (scikit-learn's alpha) uses
    ``(lmbda / m) W`` for a batch of m rows. ``blas_threads`` limits BLAS's
    threads while an epoch runs (see ``resolve_blas_threads``).
    """

    def __init__(self, net, X, Y, labels, *, batch_size, optimizer, lmbda, engine="cython",
                 l2_scale="n", blas_threads="auto", _validated=False, _x_unscanned=False):
        from fastnn.optimizers import Optimizer
        if not _validated:
            batch_size = check_int(batch_size, "batch_size", low=1)
            lmbda = check_real(lmbda, "lmbda", low=0.0)
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"The 'optimizer' parameter must be a fastnn optimizer (SGD, Adam). "
                                f"Got {optimizer!r} instead.")
        if l2_scale not in ("n", "batch"):
            raise ValueError(f"The 'l2_scale' parameter must be 'n' or 'batch'. Got {l2_scale!r} instead.")
        self.net, self.X, self.Y, self.labels = net, X, Y, labels
        # X's values not yet known to be finite (see _run): fit leaves the scan to the
        # first epoch of the kernels instead of a pass of its own. The optimizer as fit found
        # it (the first epoch may give it fresh state for this network) is put back if X
        # turns out to hold NaN or inf.
        self.x_unscanned = _x_unscanned and engine == "cython"
        self._opt_before = ((optimizer._owner, optimizer._buffers, optimizer.t)
                            if self.x_unscanned else None)
        self.n = X.shape[0]
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lmbda = lmbda
        self.l2_scale = l2_scale
        self.engine = engine
        self.blas_threads = resolve_blas_threads(net, batch_size, blas_threads)
        self.grad = aligned_empty(net.n_params, net.dtype)
        self.work = (aligned_empty(_core.workspace_size(net._sizes_c, min(batch_size, self.n)),
                                   net.dtype) if engine == "cython" else None)
        # the threads' relative speeds in each layer's regions, learnt from step to step
        # (see balance_blocks in _core.pyx)
        self.balance = (np.ones(_core.balance_size(len(net.sizes) - 1))
                        if engine == "cython" else None)

    def _steps(self, perm, start, stop, want_loss):
        net, opt = self.net, self.optimizer
        bufs = opt._state_for(net)
        vel = bufs[0]
        sq = bufs[1] if len(bufs) > 1 else bufs[0]
        per_batch = self.l2_scale == "batch"
        l2 = self.lmbda if per_batch else self.lmbda / self.n
        args = (opt._mode, opt.eta, opt.momentum, l2, per_batch, getattr(opt, "beta1", 0.0),
                getattr(opt, "beta2", 0.0), getattr(opt, "epsilon", 0.0), opt.t, want_loss)
        if self.engine == "cython":
            done, finite, loss, t = _core.train_steps(
                net._sizes_c, net._acts_c, net._cost_c, net.params, self.grad, vel, sq, self.X,
                self.Y, self.labels, perm, self.batch_size, start, stop, self.work, *args,
                balance=self.balance)
        else:
            done, finite, loss, t = reference.train_steps(
                net, net.params, self.grad, vel, sq, self.X, self.Y, self.labels, perm,
                self.batch_size, start, stop, *args)
        opt.t = t
        return done, finite, loss

    def run_epoch(self, perm, *, chunk=None, progress=None, want_loss=False):
        """Train one epoch over ``perm`` (an intp permutation of range(n)).

        The kernel runs ``chunk`` samples (a multiple of batch_size) per call and
        ``progress(samples_done)`` is called between calls. If a step makes a
        parameter non-finite, the epoch is replayed up to the step before and
        TrainingDiverged is raised (``step`` = index of the breaking mini-batch).

        When the trainer was made with X's values unscanned (``fit``), a step made
        non-finite by a NaN or inf in X restores the parameters and the optimizer as they
        were and raises ValueError naming X's first bad entry instead.

        Returns None, or with ``want_loss`` the sum over the batches of
        ``m * (C0 of the batch + l2/2 sum ||W||^2)`` taken before each update:
        divided by n, the epoch's running training loss.
        """
        opt = self.optimizer
        perm = np.ascontiguousarray(perm, dtype=np.intp)
        chunk = self.n if chunk is None else chunk
        saved = [self.net.params.copy()] + [b.copy() for b in opt._state_for(self.net)]
        saved_t = opt.t
        with blas_limit(self.blas_threads):
            out = self._run(perm, chunk, progress, want_loss, saved, saved_t)
        # an epoch reads every row, and a NaN or inf in a row makes that step's weight
        # gradient, and so the step's new weights, non-finite: the epoch would have stopped
        self.x_unscanned = False
        return out

    def _run(self, perm, chunk, progress, want_loss, saved, saved_t):
        params, n, bs, opt = self.net.params, self.n, self.batch_size, self.optimizer
        start, total = 0, 0.0
        while start < n:
            stop = min(n, start + chunk)
            done, finite, loss = self._steps(perm, start, stop, want_loss)
            total += loss
            if not finite:
                bad = start + (done - 1) * bs  # first sample of the breaking step
                params[:] = saved[0]
                for buf, old in zip(opt._state_for(self.net), saved[1:]):
                    buf[:] = old
                opt.t = saved_t
                if self.x_unscanned:
                    # X was not scanned before the first epoch (whose start was restored
                    # above): a bad value in it is the caller's error, not divergence
                    try:
                        check_finite(self.X, "X")
                    except ValueError:
                        opt._owner, opt._buffers, opt.t = self._opt_before
                        raise
                if bad > 0:
                    self._steps(perm, 0, bad, False)
                raise TrainingDiverged(
                    f"mini-batch {bad // bs}: the update made parameters non-finite. The network "
                    f"keeps the parameters of the last finite step; try a smaller eta (was "
                    f"{opt.eta}).", epoch=None, step=bad // bs, history=None)
            start = stop
            if progress is not None:
                progress(start)
        return total if want_loss else None


def _check_validation(net, validation_data):
    """(X_val, Y_val, labels_val) validated for ``net``, or None."""
    if validation_data is None:
        return None
    try:
        Xv, yv = validation_data
    except (TypeError, ValueError):
        raise ValueError("The 'validation_data' parameter must be a pair (X_val, y_val).") from None
    return net._check_Xy(Xv, yv, names=("validation_data[0]", "validation_data[1]"))


def fit(net, X, y, *, epochs=30, batch_size=10, optimizer=None, lmbda=0.0, validation_data=None,
        shuffle=True, seed=None, callbacks=(), monitor_training=True, progress_every=4096,
        engine="cython", verbose=False, blas_threads="auto"):
    """Train ``net`` in place; returns a History.

    Parameters
    ----------
    X : (n, sizes[0]) array; y : labels (n,) or targets (n, sizes[-1]).
    epochs : int >= 0; batch_size : int >= 1 (the last partial batch is trained).
    optimizer : SGD or Adam (default ``SGD(eta=0.1)``); its state carries over
        to the next fit of the same network.
    lmbda : L2 parameter >= 0; the update uses ``lmbda / n`` with n = len(X).
    validation_data : (X_val, y_val) monitored after every epoch.
    shuffle, seed : draw a new permutation every epoch from ``default_rng(seed)``.
    callbacks : see ``Callback``; monitor_training : evaluate cost and accuracy
        on the whole training set after each epoch (not counted in ``seconds``).
    engine : 'cython' (the kernels) or 'numpy' (the reference, same results).
    verbose : print one line per epoch.
    blas_threads : "auto" (one BLAS thread when a step's products are small,
        where a second thread only adds wake-up costs), None (leave BLAS as
        configured) or an int, the BLAS thread limit while training.

    A NaN or inf in X raises ValueError (naming its first row and column) and leaves
    the network and the optimizer as they were. With the kernels (engine 'cython') X's
    values are checked by the first epoch itself rather than by a pass of their own, so
    the other arguments' errors come first, and progress callbacks may already have
    been called for part of that epoch when it is raised.
    """
    from fastnn.network import check_engine
    check_engine(engine)
    epochs = check_int(epochs, "epochs", low=0)
    batch_size = check_int(batch_size, "batch_size", low=1)
    progress_every = check_int(progress_every, "progress_every", low=1)
    lmbda = check_real(lmbda, "lmbda", low=0.0)
    seed = check_seed(seed)
    if optimizer is None:
        optimizer = SGD()
    if hasattr(optimizer, "_fit_network"):
        # full-batch / second-order optimizers (fastnn.second_order) run their own loop
        X, Y, labels = net._check_Xy(X, y)
        val = _check_validation(net, validation_data)
        ends, _ = _split_callbacks(callbacks)
        return optimizer._fit_network(net, X, Y, labels, epochs=epochs, batch_size=batch_size,
                                      lmbda=lmbda, validation=val, shuffle=shuffle, seed=seed,
                                      callbacks=ends, monitor_training=monitor_training,
                                      verbose=verbose)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"The 'optimizer' parameter must be a fastnn optimizer (fastnn.SGD or "
                        f"fastnn.Adam). Got {optimizer!r} instead.")
    # With the kernels, X's values are scanned by the first epoch itself (see Trainer):
    # a separate pass over X costs 5-15 % of an epoch of the small networks
    lazy = engine == "cython" and epochs > 0
    X, Y, labels = net._check_Xy(X, y, finite=not lazy)
    val = _check_validation(net, validation_data)
    ends, progress = _split_callbacks(callbacks)

    n = X.shape[0]
    rng = np.random.default_rng(seed)
    if blas_threads not in ("auto", None):
        check_int(blas_threads, "blas_threads", low=1)
    trainer = Trainer(net, X, Y, labels, batch_size=batch_size, optimizer=optimizer, lmbda=lmbda,
                      engine=engine, blas_threads=blas_threads, _validated=True,
                      _x_unscanned=lazy)
    chunk = n if not progress else max(1, progress_every // batch_size) * batch_size
    history = History()
    ordered = np.arange(n, dtype=np.intp)
    for epoch in range(epochs):
        perm = rng.permutation(n).astype(np.intp) if shuffle else ordered
        t0 = time.perf_counter()
        try:
            trainer.run_epoch(perm, chunk=chunk,
                              progress=(lambda done: [cb(epoch, done, n) for cb in progress])
                              if progress else None)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"Training diverged in epoch {epoch} at {err}", epoch=epoch,
                                   step=err.step, history=history) from None
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "seconds": seconds}
        if monitor_training:
            row["train_cost"], row["train_accuracy"], _ = net._evaluate(X, Y, labels, lmbda, False)
        if val is not None:
            row["val_cost"], row["val_accuracy"], _ = net._evaluate(*val, lmbda, False)
        for key in ("train_cost", "val_cost"):
            if row.get(key) is not None and not np.isfinite(row[key]):
                raise TrainingDiverged(
                    f"Training diverged in epoch {epoch}: the monitored {key} is {row[key]}. The "
                    f"network keeps the parameters at the end of that epoch; try a smaller eta "
                    f"(was {optimizer.eta}).", epoch=epoch, step=None, history=history)
        history._append(**row)
        if verbose:
            print(_format_row(row), flush=True)
        stop_now = False
        for cb in ends:
            stop_now = bool(cb(history)) or stop_now
        if stop_now:
            history.stopped_early = True
            break
    return history


def _format_row(row):
    parts = [f"epoch {row['epoch']:>3}", f"{row['seconds']:.3f}s"]
    for key in ("train_cost", "train_accuracy", "val_cost", "val_accuracy"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.4f}")
    return "  ".join(parts)
