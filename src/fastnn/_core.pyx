"""fastnn's kernels: forward, backward, fused updates and the epoch loop.

Layout (see DESIGN.md). A network has L layers with widths ``sizes[0..L]``.
Layer l (0-based) maps ``sizes[l]`` inputs to ``sizes[l+1]`` outputs; its
weights ``W_l`` (shape ``(sizes[l+1], sizes[l])``, row-major) and biases
``b_l`` (shape ``(sizes[l+1],)``) lie one after the other in the flat
parameter buffer, in the order ``W_0, b_0, W_1, b_1, ...``. Gradients and
velocities share that layout. Samples are rows.

For a batch of m rows the forward pass is ``A_0 = X``,
``A_{l+1} = f_l(A_l W_l^T + b_l)``. The backward pass uses the deltas
``D_l = dC/dZ_l`` (already scaled by the 1/m of the mean):
``D_L`` from the cost, ``D_l = (D_{l+1} W_l) * f'_{l-1}(A_l)``,
``dC/dW_l = D_{l+1}^T A_l``, ``dC/db_l = sum_rows D_{l+1}``. Every
derivative is written in terms of the activation a, so the pre-activations
are never stored: sigmoid' = a(1-a), tanh' = 1-a^2, relu' = [a > 0].

Workspace for m rows, one buffer of the network's dtype, in this order::

    X0   (m, sizes[0])      gathered input rows (training only)
    A_l  (m, sizes[l])      l = 1..L
    D_l  (m, sizes[l])      l = 1..L
    Z_L  (m, sizes[L])      output pre-activations (evaluation only)

``workspace_size(sizes, m)`` gives its length. Kernels trust their inputs:
validation happens once, in the Python layer.
"""
from libc.math cimport exp, expf, log, logf, log1p, log1pf, tanh, tanhf, fabs, sqrt, sqrtf, pow
from libc.string cimport memcpy

import numpy as np

from fastnn._blas cimport floating, gemm_rm, NoTrans, Trans


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FASTNN_PREFETCH(p) __builtin_prefetch((p), 0, 2)
    #else
    #define FASTNN_PREFETCH(p) ((void)0)
    #endif
    """
    void FASTNN_PREFETCH(const void* p) noexcept nogil

cdef enum:
    MAX_LAYERS = 256
    SQ_UNITS_MAX = 1024     # units of a balanced update's sum of squares (see Job)

# Activation and cost codes; fastnn/activations.py and fastnn/costs.py hold
# the same numbers in their registries.
cdef enum:
    ACT_IDENTITY = 0
    ACT_SIGMOID = 1
    ACT_TANH = 2
    ACT_RELU = 3
    ACT_SOFTMAX = 4

cdef enum:
    COST_QUADRATIC = 0
    COST_CROSS_ENTROPY = 1
    COST_LOG_LIKELIHOOD = 2

MAX_LAYER_COUNT = MAX_LAYERS


cdef struct Net:
    int L                       # number of weight layers
    int sizes[MAX_LAYERS + 1]
    int acts[MAX_LAYERS]        # activation of layer l's output
    int cost
    Py_ssize_t woff[MAX_LAYERS] # offset of W_l in params (b_l follows W_l)
    Py_ssize_t cum[MAX_LAYERS + 2]  # cum[l] = sizes[1] + ... + sizes[l-1]


cdef int make_net(Net* net, const int[::1] sizes, const int[::1] acts,
                  int cost) except -1:
    cdef Py_ssize_t L = sizes.shape[0] - 1
    cdef Py_ssize_t l, off = 0
    if L < 1 or L > MAX_LAYERS or acts.shape[0] != L:
        raise ValueError(f"kernel: bad network spec (layers={L})")
    net.L = <int>L
    net.cost = cost
    for l in range(L + 1):
        net.sizes[l] = sizes[l]
    net.cum[0] = 0
    net.cum[1] = 0
    for l in range(L):
        net.acts[l] = acts[l]
        net.woff[l] = off
        off += <Py_ssize_t>sizes[l + 1] * (sizes[l] + 1)
        net.cum[l + 2] = net.cum[l + 1] + sizes[l + 1]
    return 0


def workspace_size(const int[::1] sizes, Py_ssize_t m):
    """Length of the workspace for ``m`` rows (see the module docstring)."""
    cdef Py_ssize_t hidden = 0, l
    for l in range(1, sizes.shape[0]):
        hidden += sizes[l]
    return m * (sizes[0] + 2 * hidden + sizes[sizes.shape[0] - 1])


# ---------------------------------------------------------------- helpers

cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)

cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)

cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)

cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)

cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating* act_ptr(const Net* net, floating* work, Py_ssize_t m,
                              int l) noexcept nogil:
    """A_l for l >= 1."""
    return work + m * (net.sizes[0] + net.cum[l])


cdef inline floating* delta_ptr(const Net* net, floating* work, Py_ssize_t m,
                                int l) noexcept nogil:
    """D_l for l >= 1."""
    return work + m * (net.sizes[0] + net.cum[net.L + 1] + net.cum[l])


cdef inline floating* zout_ptr(const Net* net, floating* work,
                               Py_ssize_t m) noexcept nogil:
    return work + m * (net.sizes[0] + 2 * net.cum[net.L + 1])


# ---------------------------------------------------------------- parallel regions

cdef extern from "_pool.h" nogil:
    ctypedef void (*fastnn_task_fn)(void* ctx, int task) noexcept nogil
    void fastnn_pool_run(int ntasks, fastnn_task_fn fn, void* ctx)
    int fastnn_pool_set_threads(int n)
    int fastnn_pool_get_threads()
    int fastnn_pool_cpu_count()
    int fastnn_pool_self()
    long fastnn_pool_now_ns()
    long fastnn_pool_tasks_run(int who)
    int FASTNN_HAVE_POOL
    int FASTNN_POOL_MAX_THREADS

# What a region computes for layer l (n_in = sizes[l], n_out = sizes[l+1],
# A = the layer's input, m rows). Each region is split between its tasks along
# one dimension, chosen so that the operand every task must read in full is
# the smaller one (BLAS packs it once per task):
cdef enum:
    JOB_FORWARD = 0      # Z = A W^T, then f(Z + b): by rows of Z, or by columns when n_out > m
    JOB_DELTA = 1        # D_l = (D_{l+1} W) * f'(A_l): by rows, or by columns when n_in > m
    JOB_GRAD = 2         # gW (+)= D_{l+1}^T A: by columns of W, or by rows when n_out > n_in
    JOB_GRAD_UPDATE = 3  # W <- rule(W, D_{l+1}^T A): split as JOB_GRAD
    JOB_GATHER = 4       # copy the batch's rows X[idx[i]] into the workspace: by rows
    JOB_PREFETCH = 5     # every thread asks for the rows X[idx[i]] (one task per thread)
    JOB_TAIL = 6         # the output layer's forward, the output delta and the delta below
                         # it, for blocks of the batch's rows (see fused_tail)
    JOB_COST = 7         # evaluation: each row's C0 (and whether its class is right): by rows
    MAX_TASKS = 32      # FASTNN_POOL_MAX_TASKS

# A region is split only when its product has at least par_min_macs
# multiply-adds, into tasks of at least min_task_macs. fastnn's own kernels take
# tasks_per_thread tasks per thread (so a thread that starts late, or not at all,
# costs little) below one_task_min_macs multiply-adds, and one per thread from
# there: each task then reads the batch, and its share of W stays in one core's
# L2 (S1 of benchmarks/sklearn_compare.py: 7 % less time per epoch; C2, C3 4 %).
# Interleaved epochs placed the bound between 235K (C1's regions: 6 % slower with one
# task per thread) and 750K multiply-adds (C1's net with batch 32: 3.5 % faster; S2's
# [784, 100, 10] with batch 10, 784K: 7.6 % faster).
cdef Py_ssize_t par_min_macs = 1 << 16
cdef Py_ssize_t min_task_macs = 1 << 14
cdef Py_ssize_t tasks_per_thread = 2
cdef Py_ssize_t one_task_min_macs = 1 << 19


def set_task_split(Py_ssize_t per_thread, Py_ssize_t one_task_min_macs_):
    """Set the tasks per thread of fastnn's own kernels and the region size (multiply-adds)
    from which they take one task per thread; returns the old pair. For tests and
    benchmarks."""
    global tasks_per_thread, one_task_min_macs
    old = (tasks_per_thread, one_task_min_macs)
    tasks_per_thread = max(1, per_thread)
    one_task_min_macs = max(0, one_task_min_macs_)
    return old


def set_split_thresholds(Py_ssize_t min_macs, Py_ssize_t min_task_macs_):
    """Set the smallest product (multiply-adds) split between threads and the
    smallest task; returns the old pair. For tests and benchmarks."""
    global par_min_macs, min_task_macs
    old = (par_min_macs, min_task_macs)
    par_min_macs = max(0, min_macs)
    min_task_macs = max(1, min_task_macs_)
    return old


cdef extern from "_sparse.h" nogil:
    int fastnn_sparse_available()
    Py_ssize_t sparse_scratch_bytes(Py_ssize_t ldw, Py_ssize_t item)
    void sparse_nt_s(const float** Ar, Py_ssize_t m, Py_ssize_t k, const float* Wt,
                     Py_ssize_t ldw, Py_ssize_t n, float* Z, Py_ssize_t ldz, void* scratch)
    void sparse_nt_d(const double** Ar, Py_ssize_t m, Py_ssize_t k, const double* Wt,
                     Py_ssize_t ldw, Py_ssize_t n, double* Z, Py_ssize_t ldz, void* scratch)
    void sparse_tn_s(const float** Ar, Py_ssize_t c0, Py_ssize_t kc, Py_ssize_t m,
                     const float* D, Py_ssize_t ldd, Py_ssize_t n, float* Gt, Py_ssize_t ldw,
                     void* scratch)
    void sparse_tn_d(const double** Ar, Py_ssize_t c0, Py_ssize_t kc, Py_ssize_t m,
                     const double* D, Py_ssize_t ldd, Py_ssize_t n, double* Gt, Py_ssize_t ldw,
                     void* scratch)


# A first layer whose input is mostly exact zeros (images) can skip them: see _sparse.h.
# evaluate/feedforward (every full-batch loss, gradient and prediction) take that path when
# the CPU runs the AVX2 kernels and the share of non-zeros in a sample of the rows is at
# most the threshold of the product (set_sparse_thresholds); training steps do not.
cdef struct SparseInput:
    bint fwd                    # the forward product takes sparse_nt
    bint grad                   # the weight gradient takes sparse_tn
    const void* wt              # W_0^T, n_in x ldw, zero-padded
    void* gt                    # G_0^T accumulated over the chunks (NULL: no gradient)
    Py_ssize_t ldw              # fan-out of layer 0 rounded up to whole vectors
    char* scratch               # scratch_bytes per task
    Py_ssize_t scratch_bytes


cdef inline void sparse_nt(const floating** Ar, Py_ssize_t m, Py_ssize_t k, const floating* Wt,
                           Py_ssize_t ldw, Py_ssize_t n, floating* Z, Py_ssize_t ldz,
                           void* scratch) noexcept nogil:
    if floating is float:
        sparse_nt_s(Ar, m, k, Wt, ldw, n, Z, ldz, scratch)
    else:
        sparse_nt_d(Ar, m, k, Wt, ldw, n, Z, ldz, scratch)


cdef inline void sparse_tn(const floating** Ar, Py_ssize_t c0, Py_ssize_t kc, Py_ssize_t m,
                           const floating* D, Py_ssize_t ldd, Py_ssize_t n, floating* Gt,
                           Py_ssize_t ldw, void* scratch) noexcept nogil:
    if floating is float:
        sparse_tn_s(Ar, c0, kc, m, D, ldd, n, Gt, ldw, scratch)
    else:
        sparse_tn_d(Ar, c0, kc, m, D, ldd, n, Gt, ldw, scratch)


SPARSE_KERNELS_AVAILABLE = bool(fastnn_sparse_available())
# Largest share of non-zero inputs for which layer 0's forward / gradient product skips
# the zeros, for [float64, float32]. Measured on this project's machine (full-batch loss
# and gradient of [784, 100, 10] over 50 000 Fashion-MNIST rows thinned to densities 0.5,
# 0.34 and 0.2, against SciPy's GEMM): in float32 sparse_tn gains about 10 % at 0.5 and 15 %
# below, sparse_nt only below about 0.35; float64's vectors hold half as many elements, so
# the skipped work pays less: sparse_tn gains from about 0.4 down, sparse_nt from 0.25.
cdef double sparse_fwd_max_density[2]
cdef double sparse_grad_max_density[2]
sparse_fwd_max_density[0] = 0.25 if SPARSE_KERNELS_AVAILABLE else -1.0
sparse_fwd_max_density[1] = 0.35 if SPARSE_KERNELS_AVAILABLE else -1.0
sparse_grad_max_density[0] = 0.4 if SPARSE_KERNELS_AVAILABLE else -1.0
sparse_grad_max_density[1] = 0.6 if SPARSE_KERNELS_AVAILABLE else -1.0


def set_sparse_thresholds(forward, gradient):
    """Set the largest share of non-zero inputs (in a sample of up to 256 rows) for which
    layer 0's forward product and weight gradient in evaluate/feedforward take the sparse
    kernels: 1 always, negative never (ignored where the CPU lacks AVX2/FMA). Each is a
    number (both dtypes) or a (float64, float32) pair. Returns the old pair of pairs. Both
    paths give the same sums up to rounding, except that the sparse one skips a zero input
    even where its weight is infinite (the dense product makes that term NaN)."""
    old = ((sparse_fwd_max_density[0], sparse_fwd_max_density[1]),
           (sparse_grad_max_density[0], sparse_grad_max_density[1]))
    fwd = forward if isinstance(forward, tuple) else (forward, forward)
    grad = gradient if isinstance(gradient, tuple) else (gradient, gradient)
    for i in range(2):
        sparse_fwd_max_density[i] = fwd[i] if SPARSE_KERNELS_AVAILABLE else -1.0
        sparse_grad_max_density[i] = grad[i] if SPARSE_KERNELS_AVAILABLE else -1.0
    return old


cdef struct Job:
    int kind
    bint f32
    const Net* net
    int l
    Py_ssize_t m
    int ntasks
    int nthreads            # threads sharing the tasks (task t is thread t % nthreads's first)
    bint by_cols            # split along columns (of Z, D_l or W) instead of rows
    Py_ssize_t split        # the length of the dimension divided between the tasks
    Py_ssize_t unit         # block sizes are multiples of this
    void* params
    void* grad
    void* vel
    void* sq
    void* work
    const void* A0          # contiguous input rows (row stride sizes[0])
    const void** rows       # row pointers of the small kernels (see forward)
    bint small              # use the small-batch kernels
    bint keep_z             # forward: keep the output layer's Z + b
    bint accumulate         # gradient: add to grad instead of overwriting
    const Rule* r
    const void* X           # gather: the data set (row stride sizes[0]) and the batch's rows
    const Py_ssize_t* idx
    const void* Y           # prefetch: the targets (or labels when Y is NULL)
    const Py_ssize_t* labels
    double scale            # tail: the output delta's factor (1/m of the mean)
    double* costs           # cost: each row's C0 (row i of the chunk at costs[i])
    Py_ssize_t row0         # cost: the chunk's first row in Y / labels
    bint want_hits          # cost: count the rows whose class is right (into hits)
    Py_ssize_t hits[MAX_TASKS]
    const SparseInput* sp   # layer 0's products skip the input's zeros (see SparseInput)
    char* tn_scratch        # the fused kernel's packed operands: tn_scratch_bytes per task
    Py_ssize_t tn_scratch_bytes
    bint want_sq            # updates: also sum the squares of the new weights (into wsq)
    const Py_ssize_t* pf_idx  # fused update of layer 0: the next batch's rows of X (to prefetch)
    Py_ssize_t pf_m
    # fused update of layer 0: the next batch's forward product (see fastnn_next_fwd), for
    # nf_m rows at nf_rows, into A_1's place in nf_work
    const void** nf_rows
    Py_ssize_t nf_m
    void* nf_work
    double wsq[MAX_TASKS]
    int bad[MAX_TASKS]      # per task: 1 if a new parameter is not finite
    # feedback balancing (see balance_blocks): the speeds of the threads, per layer and
    # region (NULL: the static blocks of task_range); the region's slot in them (-1: static
    # blocks), each task's block [bal_j0, bal_j1), its time and the thread that ran it
    double* bal
    int bal_slot
    Py_ssize_t bal_j0[MAX_TASKS]
    Py_ssize_t bal_j1[MAX_TASKS]
    long task_ns[MAX_TASKS]
    int ran_on[MAX_TASKS]
    # a balanced fused update that owes the sum of squares of its new weights: each task
    # writes one partial sum per unit of its block (see sumsq_col_units), added in order
    bint sq_units_on
    double sq_units[SQ_UNITS_MAX]
    # the fused update skips the batch rows whose delta is zero where at most this fraction
    # of the delta is non-zero (0: never; see set_fused_sparse)
    double sparse_max


cdef void init_job(Job* job, int kind, const Net* net, Py_ssize_t m, void* params,
                   void* grad, void* vel, void* sq, void* work, const void* A0,
                   const void** rows, bint small, const Rule* r) noexcept nogil:
    job.kind = kind
    job.f32 = False
    job.net = net
    job.l = 0
    job.m = m
    job.ntasks = 1
    job.nthreads = 1
    job.by_cols = False
    job.params = params
    job.grad = grad
    job.vel = vel
    job.sq = sq
    job.work = work
    job.A0 = A0
    job.rows = rows
    job.small = small
    job.keep_z = False
    job.accumulate = False
    job.r = r
    job.X = NULL
    job.idx = NULL
    job.Y = NULL
    job.labels = NULL
    job.scale = 1
    job.costs = NULL
    job.row0 = 0
    job.want_hits = False
    job.sp = NULL
    job.tn_scratch = NULL
    job.tn_scratch_bytes = 0
    job.want_sq = False
    job.pf_idx = NULL
    job.pf_m = 0
    job.nf_rows = NULL
    job.nf_m = 0
    job.nf_work = NULL
    job.bal = NULL
    job.bal_slot = -1
    job.sq_units_on = False
    job.sparse_max = 0


cdef int run_job(Job* job) noexcept nogil:
    """Run job's region for its kind and layer; returns the OR of the tasks' ``bad``.

    Chooses the split (see the JOB_ codes) and the number of tasks, then runs
    them in the pool (or inline when there is one task)."""
    cdef const Net* net = job.net
    cdef Py_ssize_t m = job.m, n_in = net.sizes[job.l], n_out = net.sizes[job.l + 1]
    cdef Py_ssize_t macs = m * n_in * n_out, threads = fastnn_pool_get_threads(), nt
    cdef int t, bad = 0
    cdef bint sq_after
    if job.kind == JOB_PREFETCH:
        # each thread reads the rows in its own tasks, so each asks for all of them
        job.ntasks = <int>min(threads, <Py_ssize_t>MAX_TASKS)
        if job.ntasks > 1:
            fastnn_pool_run(job.ntasks, job_task_any, <void*>job)
        else:
            job_task_any(<void*>job, 0)
        return 0
    if job.kind == JOB_GATHER:
        job.by_cols = False
        job.split = m
        job.unit = 1
        macs = m * n_in * 16  # a copied element costs about as much as 16 multiply-adds
    elif job.kind == JOB_FORWARD:
        # Blocks of W's rows (Z's columns) when W has more rows than the batch, and, for the
        # small kernel, when W is larger than a core's L2 keeps beside the batch (its
        # row-block variant streams its W once per 4 rows of the batch); else blocks of the
        # batch's rows (BLAS packs the shared operand once per task: W, the smaller one).
        # Softmax needs whole rows; the sparse kernel whole rows of the input.
        job.by_cols = forward_splits_w(net, job.l, m, job.small, job.f32) and not sparse_layer(job)
        job.split = n_out if job.by_cols else m
        # fastnn's kernel takes any number of W's rows (blocks of 2 or 3, then 1), so the
        # threads get equal shares (C3's and S1's 100 rows 50/50, not 48/52); but batches
        # that take the k-tiled kernel keep 4-row blocks, those of the fused update split by
        # W's rows (next_forward_fits relies on the two regions' blocks being the same).
        # Blocks of the batch's rows are whole 4-row units where the row-block kernel takes
        # every block of 4 rows or more (float32): then only the batch's last m % 4 rows
        # take the k-tiled kernel, whatever the blocks (see balance_free).
        if job.by_cols:
            job.unit = 1 if job.small and m > nt_tiled_rows(job.f32) else 4
        else:
            job.unit = 4 if forward_rows_any_blocks(job) else 1
    elif job.kind == JOB_DELTA:
        job.by_cols = n_in > m
        job.split = n_in if job.by_cols else m
        job.unit = 8 if job.by_cols else 1
    elif job.kind == JOB_COST:
        # an output's cost (an exp and a log, 40-50 ns) counted as 256 multiply-adds
        job.by_cols = False
        job.split = m
        job.unit = 1
        macs = m * net.sizes[net.L] * 256
    elif job.kind == JOB_TAIL:
        # whole 4-row blocks of the batch where the forward kernel gives each row the same
        # bits in any such block (float32; see forward_rows_any_blocks), else one task
        # (float64: a block of at most nt_tiled_rows rows would take the k-tiled kernel); two
        # products
        job.by_cols = False
        job.split = m
        job.unit = 4 if nt_tiled_rows(job.f32) < 4 else max(m, 1)
        macs = 2 * m * n_in * n_out
    else:
        # Each task owns a fixed block of W (and of its velocity), so each thread keeps it
        # in its own cache from step to step. The fused kernel takes blocks of W's rows for
        # small batches (it reads the batch in place) and blocks of W's columns for batches
        # it packs (see fused_split_cols). BLAS splits so that the operand each task packs
        # is the smaller one.
        job.by_cols = gradient_splits_cols(net, job.l, m, job.kind == JOB_GRAD_UPDATE and job.small)
        job.split = n_in if job.by_cols else n_out
        # whole cache lines of W's rows (no line written by two threads), at least pairs of
        # vectors of the fused kernel; whole 4-row blocks of W
        job.unit = (16 if job.f32 else 8) if job.by_cols else 4
        if sparse_layer(job):
            # blocks of the input's columns (whole 8-column panels of sparse_tn)
            job.by_cols = True
            job.split = n_in
            job.unit = 8
    if threads <= 1 or macs < par_min_macs:
        nt = 1
    else:
        # BLAS packs the shared operand once per task: one task per thread there
        nt = min(threads * (tasks_per_thread if uses_own_kernels(job)
                            and macs < one_task_min_macs else 1),
                 (job.split + job.unit - 1) // job.unit,
                 macs // min_task_macs, <Py_ssize_t>MAX_TASKS)
        nt = max(1, nt)
    job.ntasks = <int>nt
    job.nthreads = <int>max(1, min(threads, nt))
    if job.nf_m > 0 and job.split < next_forward_min_rows * nt:
        # too few rows of W per task: the next batch's forward goes on its own (see
        # next_forward_min_rows)
        job.nf_m = 0
    job.bal_slot = -1
    sq_after = False
    if (job.bal != NULL and balance_mode != BALANCE_OFF and nt >= 2 and nt == job.nthreads
            and balance_free(job)):
        job.bal_slot = (job.l * 2 + (job.kind == JOB_GRAD_UPDATE)) * FASTNN_POOL_MAX_THREADS
        balance_blocks(job)
        fastnn_count_add(&balance_regions, 1)
        # the tasks' partial sums of squares would group by the blocks: each task sums its
        # new weights per unit instead, and the units' sums add up in order after
        sq_after = job.want_sq
        job.want_sq = False
        job.sq_units_on = sq_after
    cdef bint timed = region_timing
    cdef long r0 = fastnn_pool_now_ns() if timed else 0
    if nt == 1:
        job_task_any(<void*>job, 0)
    else:
        fastnn_pool_run(job.ntasks, job_task_any, <void*>job)
    if timed:
        fastnn_count_add(&rt_wall_ns[rt_slot(job)], fastnn_pool_now_ns() - r0)
        fastnn_count_add(&rt_regions[rt_slot(job)], 1)
    if job.bal_slot >= 0:
        balance_learn(job)
    if sq_after:
        job.want_sq = True
        job.sq_units_on = False
        for t in range(job.ntasks):
            job.wsq[t] = 0
        for t in range((job.split + job.unit - 1) // job.unit):
            job.wsq[0] += job.sq_units[t]
    for t in range(job.ntasks):
        bad |= job.bad[t]
    return bad


# Feedback balancing. On a shared machine one vCPU is now and then a quarter to a half
# slower than the other for minutes at a time (here: C3's forward tasks took 116 us on one
# thread and 71 us on the other, step after step), and equal blocks then leave the faster
# thread waiting at every region's end. So in the regions whose results do not depend on
# their blocks (balance_free), with one task per thread, each thread's block is sized by
# its speed in that region (units per nanosecond, averaged over the steps before), and the
# threads finish together (in that minute C3's epoch took 0.18-0.21 s instead of
# 0.23-0.24). Only where the blocks cannot change a bit: which thread computes an element
# never changes how it is computed (each entry of Z is one dot product over the whole
# fan-in; each weight's gradient one sum over the batch rows in order, then the rule), so
# the results stay reproducible bit for bit whatever the timing.
cdef enum:
    BALANCE_OFF = 0
    BALANCE_ADAPT = 1   # blocks by the measured speeds (the default)
    BALANCE_FIXED = 2   # blocks by the speeds as they are, never updated (for tests)
cdef int balance_mode = BALANCE_ADAPT
# a step's measurement moves the speeds this far toward it; a thread measured more than
# BALANCE_OUTLIER times faster or slower than the mean (a preempted task) is not believed
cdef double balance_gain = 0.25
cdef double BALANCE_OUTLIER = 4.0
cdef Py_ssize_t balance_regions = 0, balance_learned = 0


cdef inline bint balance_free(const Job* job) noexcept nogil:
    """Whether the region's results are the same bits whatever its blocks:
    - fastnn's forward kernel over blocks of W's rows for batches past the k-tiled size
      (every entry of Z is the same dot product in any block; bias and activation are
      elementwise) or over 4-row blocks of the batch (forward_rows_any_blocks);
    - the fused update (each weight's gradient is one sum over the batch in order, then the
      rule), unless it also forms the next batch's forward (which takes the update's blocks
      as the forward's). Its sum of squares, which the tasks' partial sums would group by
      the blocks, then comes from per-unit sums (see run_job), at most SQ_UNITS_MAX."""
    if sparse_layer(job) or not job.small:
        return False
    if job.kind == JOB_FORWARD:
        return job.unit == 1 if job.by_cols else forward_rows_any_blocks(job)
    return (job.kind == JOB_GRAD_UPDATE and job.nf_m == 0
            and (not job.want_sq or (job.split + job.unit - 1) // job.unit <= SQ_UNITS_MAX))


cdef inline bint forward_rows_any_blocks(const Job* job) noexcept nogil:
    """Whether a forward region over blocks of the batch's rows gives the same bits in any
    blocks of whole 4-row units: fastnn's kernel (not sparse), which takes its row-block
    variant for every block of 4 rows or more (the k-tiled variant only up to 3 rows, as
    float32 does) and so the k-tiled one only for the last m % 4 rows of the batch."""
    return (job.kind == JOB_FORWARD and not job.by_cols and job.small and not sparse_layer(job)
            and nt_tiled_rows(job.f32) < 4)


cdef void sumsq_units(Job* job, const floating* W, Py_ssize_t n_in, Py_ssize_t n_out,
                      Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """The sums of squares of the new weights in block [j0, j1) of W (n_out x n_in), one
    per unit of the split (columns: sumsq_col_units; rows: whole rows of W) into
    job.sq_units."""
    cdef Py_ssize_t r
    if job.by_cols:
        if floating is float:
            sumsq_col_units_s(W, n_in, n_out, j0, j1, job.unit, &job.sq_units[j0 // job.unit])
        else:
            sumsq_col_units_d(W, n_in, n_out, j0, j1, job.unit, &job.sq_units[j0 // job.unit])
    else:
        r = j0
        while r < j1:
            if floating is float:
                job.sq_units[r // job.unit] = fastnn_sumsq_s(W + r * n_in,
                                                             min(job.unit, j1 - r) * n_in)
            else:
                job.sq_units[r // job.unit] = fastnn_sumsq_d(W + r * n_in,
                                                             min(job.unit, j1 - r) * n_in)
            r += job.unit


cdef void balance_blocks(Job* job) noexcept nogil:
    """Blocks in whole units sized by the threads' speeds w (task t = thread t), at least one
    unit each, laid out in reverse task order like task_range's (the last unit, which may
    be short, goes to the caller)."""
    cdef const double* w = job.bal + job.bal_slot
    cdef int T = job.ntasks, h
    cdef Py_ssize_t units = (job.split + job.unit - 1) // job.unit, prev = 0, cut
    cdef double total = 0, acc = 0
    for h in range(T):
        total += w[h]
    for h in range(T):
        acc += w[h]
        cut = units if h == T - 1 else <Py_ssize_t>(units * acc / total)
        cut = max(prev + 1, min(cut, units - (T - 1 - h)))
        job.bal_j0[h] = min(job.split, job.unit * (units - cut))
        job.bal_j1[h] = min(job.split, job.unit * (units - prev))
        prev = cut


cdef void balance_learn(Job* job) noexcept nogil:
    """Move the threads' speeds toward this region's (see balance_move), unless a task ran
    on another thread than its own (a helper was late, or the pool was busy and the caller
    ran them all)."""
    cdef int T = job.ntasks, h
    cdef double units[MAX_TASKS]
    if balance_mode != BALANCE_ADAPT:
        return
    for h in range(T):
        if job.ran_on[h] != h:
            return
        units[h] = <double>(job.bal_j1[h] - job.bal_j0[h])
    if balance_move(job.bal + job.bal_slot, T, units, job.task_ns):
        fastnn_count_add(&balance_learned, 1)


cdef bint balance_move(double* w, int T, const double* units, const long* ns) noexcept nogil:
    """w_h += balance_gain (r_h / mean(r) - w_h) for the rates r_h = units_h / ns_h, then
    scaled to a mean of 1; nothing when a rate is more than BALANCE_OUTLIER times above or
    below the mean (a preempted task) or a time is not positive. Returns whether it moved."""
    cdef double rate[MAX_TASKS]
    cdef double mean = 0, s, norm = 0
    cdef int h
    for h in range(T):
        if ns[h] <= 0:
            return False
        rate[h] = units[h] / ns[h]
        mean += rate[h]
    mean /= T
    for h in range(T):
        s = rate[h] / mean
        if s * BALANCE_OUTLIER < 1 or s > BALANCE_OUTLIER:
            return False
    for h in range(T):
        w[h] += balance_gain * (rate[h] / mean - w[h])
        norm += w[h]
    for h in range(T):
        w[h] *= T / norm
    return True


def balance_step(speeds, units, times_ns):
    """balance_move on Python lists (the speeds, each thread's units and nanoseconds);
    returns the new speeds. For tests."""
    cdef int T = len(speeds), h
    cdef double w[MAX_TASKS]
    cdef double u[MAX_TASKS]
    cdef long ns[MAX_TASKS]
    if not 1 <= T <= MAX_TASKS or len(units) != T or len(times_ns) != T:
        raise ValueError(f"balance_step: need 1..{MAX_TASKS} speeds and as many units and "
                         f"times; got {len(speeds)}, {len(units)}, {len(times_ns)}")
    for h in range(T):
        w[h], u[h], ns[h] = speeds[h], units[h], times_ns[h]
    balance_move(w, T, u, ns)
    return [w[h] for h in range(T)]


def balance_size(int L):
    """Length of the speeds buffer ``train_steps`` takes for a network of L layers."""
    return max(1, L) * 2 * FASTNN_POOL_MAX_THREADS


def set_balance(int mode):
    """How regions whose results do not depend on their blocks size them: 0 equal blocks
    (task_range), 1 by the threads' measured speeds (the default), 2 by the speeds in the
    buffer as given, never updated (for tests); returns the old mode."""
    global balance_mode
    if mode not in (BALANCE_OFF, BALANCE_ADAPT, BALANCE_FIXED):
        raise ValueError(f"set_balance: mode must be 0, 1 or 2; got {mode}")
    old = balance_mode
    balance_mode = mode
    return old


def balance_counts():
    """(regions so far whose blocks were sized by the threads' speeds, regions whose
    measured times moved those speeds). For tests."""
    return balance_regions, balance_learned


cdef inline bint forward_splits_w(const Net* net, int l, Py_ssize_t m, bint small,
                                  bint f32) noexcept nogil:
    """Whether layer l's forward region for m rows gives its tasks blocks of W's rows
    (columns of Z) rather than of the batch's rows (see run_job); sparse input aside."""
    cdef Py_ssize_t n_in = net.sizes[l], n_out = net.sizes[l + 1]
    return ((n_out > m or (small and n_out >= 16 and
                           n_out * n_in * (4 if f32 else 8) > fwd_cols_min_w_bytes))
            and net.acts[l] != ACT_SOFTMAX)


cdef inline bint gradient_splits_cols(const Net* net, int l, Py_ssize_t m,
                                      bint fused) noexcept nogil:
    """Whether layer l's weight-gradient region for m rows (fused: in the fused kernel)
    gives its tasks blocks of W's columns rather than of its rows (see run_job)."""
    cdef Py_ssize_t n_in = net.sizes[l], n_out = net.sizes[l + 1]
    return n_out < 8 or (not fused and n_out <= n_in) or (
        fused and fused_split_cols and n_in >= n_out and m >= FUSED_COLS_MIN_ROWS)


cdef inline bint uses_own_kernels(const Job* job) noexcept nogil:
    """Whether the region's product runs in fastnn's small kernels (not BLAS)."""
    return (job.small and (job.kind == JOB_FORWARD or job.kind == JOB_GRAD_UPDATE)
            or sparse_layer(job))


cdef inline bint sparse_layer(const Job* job) noexcept nogil:
    """Whether the region is layer 0's forward or weight gradient on a sparse input."""
    return (job.sp != NULL and job.l == 0
            and (job.kind == JOB_FORWARD and job.sp.fwd or job.kind == JOB_GRAD and job.sp.grad))


cdef inline Py_ssize_t task_units(Py_ssize_t units, Py_ssize_t ntasks, Py_ssize_t threads,
                                  Py_ssize_t t) noexcept nogil:
    """The units of task t: thread h (h < threads) first runs tasks h, h + threads, ...
    (see _pool.h), so the units are shared out between the threads as evenly as they go
    (floor(U (h+1) / T) - floor(U h / T) for thread h), then each thread's share between
    its tasks likewise. Splitting the tasks evenly instead gave 30 units in 4 tasks as 7, 8,
    7, 8: 14 for one thread, 16 for the other, which then set the region's time."""
    cdef Py_ssize_t h = t % threads, q = t // threads
    cdef Py_ssize_t share = units * (h + 1) // threads - units * h // threads
    cdef Py_ssize_t nq = (ntasks - h + threads - 1) // threads
    return share * (q + 1) // nq - share * q // nq


cdef inline void task_range(const Job* job, int t, Py_ssize_t* j0,
                            Py_ssize_t* j1) noexcept nogil:
    """Block t of the region's tasks over [0, split), in whole units (the last one may be
    short), sized by task_units. The blocks lie in reverse task order, so a short last unit,
    and the smaller share when the units do not divide evenly, go to thread 0, the caller,
    which publishes the region before it starts its tasks and runs the serial work between
    regions (C1's 30 rows of W in 4-row blocks: 14 for the caller, 16 for the helper;
    alternating processes, 0.969 and 0.993 of the epoch time with the caller taking 16)."""
    cdef Py_ssize_t units = (job.split + job.unit - 1) // job.unit, before = 0, u
    cdef Py_ssize_t threads = max(1, min(<Py_ssize_t>job.nthreads, <Py_ssize_t>job.ntasks))
    if job.bal_slot >= 0:
        j0[0] = job.bal_j0[t]
        j1[0] = job.bal_j1[t]
        return
    for u in range(t + 1, job.ntasks):
        before += task_units(units, job.ntasks, threads, u)
    j0[0] = min(job.split, job.unit * before)
    j1[0] = min(job.split, job.unit * (before + task_units(units, job.ntasks, threads, t)))


# Optional accounting of the parallel regions (for profiling; off by default): per kind of
# region and layer (layers past the fourth counted with it), how many regions ran and their
# wall time as the caller saw it, and the tasks the calling thread and the helpers ran and
# the time each spent in them, so that a region's wait (its wall time against its slowest
# thread's tasks) and the threads' imbalance show. Two networks may train at once in two
# Python threads, hence the atomic adds.
cdef enum:
    RT_LAYERS = 4
    RT_KINDS = 8
cdef bint region_timing = False
cdef Py_ssize_t rt_regions[RT_KINDS * RT_LAYERS]
cdef Py_ssize_t rt_wall_ns[RT_KINDS * RT_LAYERS]
cdef Py_ssize_t rt_tasks[2][RT_KINDS * RT_LAYERS]
cdef Py_ssize_t rt_task_ns[2][RT_KINDS * RT_LAYERS]
RT_NAMES = ("forward", "delta", "gradient", "gradient+update", "gather", "prefetch", "tail",
            "cost")


cdef inline int rt_slot(const Job* job) noexcept nogil:
    return job.kind * RT_LAYERS + min(job.l, RT_LAYERS - 1)


def set_region_timing(bint on):
    """Account the kernels' parallel regions (see region_times); returns the old setting."""
    global region_timing
    old = region_timing
    region_timing = on
    return old


def region_times(bint reset=True):
    """{(kind, layer): {"regions", "wall_s", "caller_tasks", "caller_s", "helper_tasks",
    "helper_s"}} accumulated while region timing is on: how many regions of that kind ran
    for that layer (prefetch regions are not timed as a whole, only their tasks), their
    wall time as the calling thread saw it, and the tasks run by the calling thread and by
    the helpers with the seconds spent in them. Layers from the fourth on count as the
    fourth."""
    cdef int i, w
    out = {}
    for i in range(RT_KINDS * RT_LAYERS):
        if rt_regions[i] or rt_tasks[0][i] or rt_tasks[1][i]:
            out[(RT_NAMES[i // RT_LAYERS], i % RT_LAYERS)] = {
                "regions": rt_regions[i], "wall_s": rt_wall_ns[i] * 1e-9,
                "caller_tasks": rt_tasks[0][i], "caller_s": rt_task_ns[0][i] * 1e-9,
                "helper_tasks": rt_tasks[1][i], "helper_s": rt_task_ns[1][i] * 1e-9}
    if reset:
        for i in range(RT_KINDS * RT_LAYERS):
            rt_regions[i] = 0
            rt_wall_ns[i] = 0
            for w in range(2):
                rt_tasks[w][i] = 0
                rt_task_ns[w][i] = 0
    return out


cdef void job_task_any(void* ctx, int t) noexcept nogil:
    cdef Job* job = <Job*>ctx
    cdef bint timed = region_timing
    cdef long t0 = fastnn_pool_now_ns() if job.bal_slot >= 0 or timed else 0
    cdef long dt
    cdef int who
    if job.f32:
        job_task(job, t, <float*>NULL)
    else:
        job_task(job, t, <double*>NULL)
    if job.bal_slot >= 0 or timed:
        dt = fastnn_pool_now_ns() - t0
        if job.bal_slot >= 0:
            job.task_ns[t] = dt
            job.ran_on[t] = fastnn_pool_self()
        if timed:
            who = fastnn_pool_self() != 0
            fastnn_count_add(&rt_tasks[who][rt_slot(job)], 1)
            fastnn_count_add(&rt_task_ns[who][rt_slot(job)], dt)


cdef inline bint next_forward_splits_rows(const Net* net, Py_ssize_t m, bint f32) noexcept nogil:
    """Whether a training step's layer-0 forward region for m rows gives its tasks blocks of
    the batch's rows (each thread then reads only its own rows) rather than of W's."""
    return not forward_splits_w(net, 0, m, small_layer(net, 0, m, 4 if f32 else 8), f32)


cdef void next_rows_plan(const Job* job, int t, fastnn_pf_plan* plan) noexcept nogil:
    """The part of the next batch's rows that task t of a fused update asks the cache for,
    shared out between the tasks a thread runs (t, t + T, ...: the pool's preferred order).
    Where the next forward region splits W's rows, every thread reads all the rows there, so
    each thread asks for all of them; where it splits the batch's rows, each asks for the
    block its forward tasks take with equal shares (thread h of T: the (T - h)-th of T equal
    blocks, as task_range lays them out; the blocks that follow the threads' speeds move
    from there by a few rows at most). C2 (400 KB of rows, forward by the batch's rows): a
    half per thread, 0.953x the time of no prefetch (one process, alternating epochs; 0.970x
    and 0.993x in two earlier runs); all of them per thread had been 4-5 % slower than none."""
    cdef Py_ssize_t n0 = job.net.sizes[0], itemsize = 4 if job.f32 else 8
    cdef Py_ssize_t threads = max(1, min(<Py_ssize_t>fastnn_pool_get_threads(), <Py_ssize_t>job.ntasks))
    cdef Py_ssize_t h = t % threads, q = t // threads
    cdef Py_ssize_t nq = (job.ntasks - h + threads - 1) // threads
    cdef Py_ssize_t r0 = 0, r1 = job.pf_m
    plan.X = <const char*>job.X
    plan.idx = job.pf_idx
    plan.row_bytes = n0 * itemsize
    plan.lines = (plan.row_bytes + 63) // 64
    if next_forward_splits_rows(job.net, job.pf_m, job.f32):
        r0 = job.pf_m * (threads - 1 - h) // threads
        r1 = job.pf_m * (threads - h) // threads
    plan.q0 = plan.lines * r0 + plan.lines * (r1 - r0) * q // nq
    plan.q1 = plan.lines * r0 + plan.lines * (r1 - r0) * (q + 1) // nq


cdef void job_task(Job* job, int t, floating* dtype_tag) noexcept nogil:
    """Task t of the region (see the JOB_ codes): block [j0, j1) of its split."""
    cdef const Net* net = job.net
    cdef int l = job.l
    cdef Py_ssize_t m = job.m, i, j, j0, j1, nb
    cdef Py_ssize_t n_in = net.sizes[l], n_out = net.sizes[l + 1]
    cdef floating* params = <floating*>job.params
    cdef floating* work = <floating*>job.work
    cdef Py_ssize_t off = net.woff[l]
    cdef floating* W = params + off
    cdef floating* b = W + n_out * n_in
    cdef const floating* A = <const floating*>job.A0 if l == 0 else act_ptr(net, work, m, l)
    cdef const floating** Ar = (<const floating**>job.rows) + l * m if job.rows != NULL else NULL
    cdef floating* Z
    cdef floating* Zl
    cdef floating* zout = NULL
    cdef floating* D
    cdef floating* Dl
    cdef floating* Al
    cdef floating* gW
    cdef floating* V
    cdef floating* S
    cdef double* wsq
    cdef double part = 0
    cdef int bad = 0
    cdef fastnn_pf_plan plan
    cdef const fastnn_pf_plan* pf
    cdef fastnn_next_fwd nf
    cdef const fastnn_next_fwd* nfp
    if job.kind == JOB_PREFETCH:
        prefetch_rows(<const floating*>job.X, job.idx, m, n_in)
        if t == 0 and (job.labels != NULL or job.Y != NULL):
            # and the targets the output delta reads (once)
            for i in range(m):
                if job.labels != NULL:
                    FASTNN_PREFETCH(job.labels + job.idx[i])
                else:
                    FASTNN_PREFETCH(<const floating*>job.Y + job.idx[i] * net.sizes[net.L])
        return
    task_range(job, t, &j0, &j1)
    nb = j1 - j0
    job.bad[t] = 0
    job.wsq[t] = 0
    job.hits[t] = 0
    if nb <= 0:
        return
    if job.kind == JOB_GATHER:
        for i in range(j0, j1):
            memcpy(work + i * n_in, <const floating*>job.X + job.idx[i] * n_in,
                   n_in * sizeof(floating))
            Ar[i] = work + i * n_in
    elif job.kind == JOB_FORWARD:
        Z = act_ptr(net, work, m, l + 1)
        if job.keep_z and l == net.L - 1:
            zout = zout_ptr(net, work, m)
        if job.by_cols:
            if job.small:
                small_nt(Ar, W + j0 * n_in, Z + j0, m, nb, n_in, n_out)
            else:
                gemm_rm(NoTrans, Trans, <int>m, <int>nb, <int>n_in, <floating>1.0, A, <int>n_in,
                        W + j0 * n_in, <int>n_in, <floating>0.0, Z + j0, <int>n_out)
            bias_activate(net.acts[l], Z, b, m, n_out, j0, j1, zout)
        else:
            if sparse_layer(job):
                sparse_nt(Ar + j0, nb, n_in, <const floating*>job.sp.wt, job.sp.ldw, n_out,
                          Z + j0 * n_out, n_out, job.sp.scratch + t * job.sp.scratch_bytes)
            elif job.small:
                small_nt(Ar + j0, W, Z + j0 * n_out, nb, n_out, n_in, n_out)
            else:
                gemm_rm(NoTrans, Trans, <int>nb, <int>n_out, <int>n_in, <floating>1.0,
                        A + j0 * n_in, <int>n_in, W, <int>n_in, <floating>0.0,
                        Z + j0 * n_out, <int>n_out)
            bias_activate(net.acts[l], Z + j0 * n_out, b, nb, n_out, 0, n_out,
                          zout + j0 * n_out if zout != NULL else NULL)
    elif job.kind == JOB_COST:
        Al = act_ptr(net, work, m, net.L)
        Z = zout_ptr(net, work, m)
        n_out = net.sizes[net.L]
        for i in range(j0, j1):
            job.costs[i] = row_cost(net, Z + i * n_out, Al + i * n_out, <const floating*>job.Y,
                                    job.labels, job.row0 + i)
            if job.want_hits:
                job.hits[t] += (row_class(Al + i * n_out, n_out)
                                == true_class(<const floating*>job.Y, job.labels, job.row0 + i,
                                              n_out))
    elif job.kind == JOB_TAIL:
        # rows j0..j1 of the output layer's A (and Z + b), of its delta and of the delta of
        # the layer below (l >= 1): the same kernels on the same rows as the forward, output
        # delta and delta regions (by rows) would run
        Z = act_ptr(net, work, m, l + 1)
        if job.keep_z:
            zout = zout_ptr(net, work, m) + j0 * n_out
        small_nt(Ar + j0, W, Z + j0 * n_out, nb, n_out, n_in, n_out)
        bias_activate(net.acts[l], Z + j0 * n_out, b, nb, n_out, 0, n_out, zout)
        if job.costs != NULL:
            # and each row's C0 (for the running loss), added in row order after the region
            Zl = zout_ptr(net, work, m)
            for i in range(j0, j1):
                if job.labels != NULL:
                    job.costs[i] = row_cost(net, Zl + i * n_out, Z + i * n_out, NULL,
                                            job.labels, i)
                else:
                    job.costs[i] = row_cost(net, Zl + i * n_out, Z + i * n_out,
                                            <const floating*>job.Y, NULL, job.idx[i])
        output_delta_rows(net, work, m, j0, j1, <const floating*>job.Y, job.labels, job.idx,
                          <floating>job.scale)
        D = delta_ptr(net, work, m, l + 1)
        Dl = delta_ptr(net, work, m, l)
        Al = act_ptr(net, work, m, l)
        # (tail_fits: small_nn, whose rows do not depend on the block)
        small_nn(D + j0 * n_out, n_out, W, n_in, Dl + j0 * n_in, n_in, nb, n_out, n_in)
        times_derivative(net.acts[l - 1], Dl + j0 * n_in, Al + j0 * n_in, nb * n_in)
    elif job.kind == JOB_DELTA:
        # D_l (l >= 1) has n_in columns
        D = delta_ptr(net, work, m, l + 1)
        Dl = delta_ptr(net, work, m, l)
        Al = act_ptr(net, work, m, l)
        if job.by_cols:
            if small_delta(net, l, m):
                small_nn(D, n_out, W + j0, n_in, Dl + j0, n_in, m, n_out, nb)
            else:
                gemm_rm(NoTrans, NoTrans, <int>m, <int>nb, <int>n_out, <floating>1.0, D,
                        <int>n_out, W + j0, <int>n_in, <floating>0.0, Dl + j0, <int>n_in)
            for i in range(m):
                times_derivative(net.acts[l - 1], Dl + i * n_in + j0, Al + i * n_in + j0, nb)
        else:
            if small_delta(net, l, m):
                small_nn(D + j0 * n_out, n_out, W, n_in, Dl + j0 * n_in, n_in, nb, n_out, n_in)
            else:
                gemm_rm(NoTrans, NoTrans, <int>nb, <int>n_in, <int>n_out, <floating>1.0,
                        D + j0 * n_out, <int>n_out, W, <int>n_in, <floating>0.0,
                        Dl + j0 * n_in, <int>n_in)
            times_derivative(net.acts[l - 1], Dl + j0 * n_in, Al + j0 * n_in, nb * n_in)
    else:
        D = delta_ptr(net, work, m, l + 1)
        wsq = &job.wsq[t] if job.want_sq else NULL
        V = <floating*>job.vel + off if job.vel != NULL else NULL
        S = <floating*>job.sq + off if job.sq != NULL else NULL
        gW = <floating*>job.grad + off
        if sparse_layer(job):
            # G^T's rows j0..j1 (added to; the caller zeroes it and stores G = (G^T)^T)
            sparse_tn(Ar, j0, nb, m, D, n_out, n_out, <floating*>job.sp.gt + j0 * job.sp.ldw,
                      job.sp.ldw, job.sp.scratch + t * job.sp.scratch_bytes)
        elif job.kind == JOB_GRAD_UPDATE and job.small:
            pf = NULL
            if job.pf_m > 0 and l == 0:
                next_rows_plan(job, t, &plan)
                pf = &plan
            if job.by_cols:
                bad = small_tn_update(D, n_out, Ar, j0, W + j0, V + j0,
                                      S + j0 if S != NULL else NULL, n_in, m, n_out, nb, job.r,
                                      job.tn_scratch + t * job.tn_scratch_bytes, wsq, pf, NULL,
                                      job.sparse_max)
            else:
                nfp = NULL
                if job.nf_m > 0 and l == 0:
                    # and the next batch's Z_1 = X W^T (then + b, activated) for W's rows
                    # j0..j1 (the biases were updated before this region)
                    Z = act_ptr(net, <floating*>job.nf_work, job.nf_m, 1)
                    nf.rows = <const void* const*>job.nf_rows
                    nf.m = job.nf_m
                    nf.ldz = n_out
                    nf.Z = <void*>(Z + j0)
                    nfp = &nf
                    pf = NULL
                bad = small_tn_update(D + j0, n_out, Ar, 0, W + j0 * n_in, V + j0 * n_in,
                                      S + j0 * n_in if S != NULL else NULL, n_in, m, nb, n_in,
                                      job.r, job.tn_scratch + t * job.tn_scratch_bytes, wsq, pf,
                                      nfp, job.sparse_max)
                if nfp != NULL:
                    bias_activate(net.acts[0], Z, b, job.nf_m, n_out, j0, j1, <floating*>NULL)
            if job.sq_units_on:
                sumsq_units(job, W, n_in, n_out, j0, j1)
        elif job.by_cols:
            gemm_rm(Trans, NoTrans, <int>n_out, <int>nb, <int>m, <floating>1.0, D, <int>n_out,
                    A + j0, <int>n_in, <floating>(1 if job.accumulate else 0), gW + j0, <int>n_in)
            if job.kind == JOB_GRAD_UPDATE:
                for j in range(n_out):
                    bad |= update_segment(W + j * n_in + j0, gW + j * n_in + j0,
                                          V + j * n_in + j0, S + j * n_in + j0, nb, job.r, True,
                                          &part if wsq != NULL else NULL)
                    if wsq != NULL:
                        wsq[0] += part
        else:
            gemm_rm(Trans, NoTrans, <int>nb, <int>n_in, <int>m, <floating>1.0, D + j0, <int>n_out,
                    A, <int>n_in, <floating>(1 if job.accumulate else 0), gW + j0 * n_in,
                    <int>n_in)
            if job.kind == JOB_GRAD_UPDATE:
                bad = update_segment(W + j0 * n_in, gW + j0 * n_in, V + j0 * n_in, S + j0 * n_in,
                                     nb * n_in, job.r, True, wsq)
    job.bad[t] = bad


cdef struct Scan:
    const void* X
    Py_ssize_t rows, cols
    bint f32
    int ntasks
    Py_ssize_t first_bad[MAX_TASKS]   # per task: first non-finite row of its block, or -1


cdef void scan_task(void* ctx, int t) noexcept nogil:
    """Block t of the rows: records its first row holding NaN or inf."""
    cdef Scan* sc = <Scan*>ctx
    cdef Py_ssize_t r0 = sc.rows * t // sc.ntasks, r1 = sc.rows * (t + 1) // sc.ntasks
    cdef Py_ssize_t i, step = max(1, 4096 // max(sc.cols, 1)), nr
    cdef int bad
    sc.first_bad[t] = -1
    i = r0
    while i < r1:
        nr = min(step, r1 - i)
        if sc.f32:
            bad = fastnn_nonfinite_s(<const float*>sc.X + i * sc.cols, nr * sc.cols)
        else:
            bad = fastnn_nonfinite_d(<const double*>sc.X + i * sc.cols, nr * sc.cols)
        if bad:
            while True:  # the row within the block
                if sc.f32:
                    bad = fastnn_nonfinite_s(<const float*>sc.X + i * sc.cols, sc.cols)
                else:
                    bad = fastnn_nonfinite_d(<const double*>sc.X + i * sc.cols, sc.cols)
                if bad:
                    sc.first_bad[t] = i
                    return
                i += 1
        i += nr


def first_nonfinite_row(const floating[:, ::1] X):
    """Index of the first row of X holding NaN or inf, or -1 (rows scanned in parallel)."""
    cdef Scan sc
    cdef int t
    cdef Py_ssize_t macs = X.shape[0] * X.shape[1]
    sc.X = <const void*>&X[0, 0] if X.shape[0] > 0 and X.shape[1] > 0 else NULL
    sc.rows = X.shape[0]
    sc.cols = X.shape[1]
    sc.f32 = floating is float
    if sc.X == NULL:
        return -1
    # about 1 MB per task at least; one per thread at most
    sc.ntasks = <int>max(1, min(<Py_ssize_t>fastnn_pool_get_threads(), macs // (1 << 17),
                                <Py_ssize_t>MAX_TASKS, sc.rows))
    with nogil:
        if sc.ntasks > 1:
            fastnn_pool_run(sc.ntasks, scan_task, <void*>&sc)
        else:
            scan_task(<void*>&sc, 0)
    for t in range(sc.ntasks):
        if sc.first_bad[t] >= 0:
            return sc.first_bad[t]
    return -1


def set_num_threads(int n):
    """Threads the kernels' parallel regions use (the caller included); returns
    the value in effect (1 where the build has no thread pool)."""
    return fastnn_pool_set_threads(n)


def get_num_threads():
    """Threads the kernels' parallel regions use (the caller included)."""
    return fastnn_pool_get_threads()


def task_blocks(Py_ssize_t split, Py_ssize_t unit, int ntasks, int nthreads, speeds=None):
    """The blocks [j0, j1) that ``ntasks`` tasks of a region take over [0, split) in whole
    units (see task_range), task t being thread t % nthreads's first choice; with
    ``speeds`` (one per thread, one task per thread), the blocks balance_blocks sizes by
    them. For tests."""
    cdef Job job
    cdef Py_ssize_t j0, j1
    cdef int t
    cdef double w[MAX_TASKS]
    if split < 0 or unit < 1 or not 1 <= ntasks <= MAX_TASKS or nthreads < 1:
        raise ValueError(f"task_blocks: need split >= 0, unit >= 1, 1 <= ntasks <= {MAX_TASKS} "
                         f"and nthreads >= 1; got {split}, {unit}, {ntasks}, {nthreads}")
    job.split, job.unit, job.ntasks, job.nthreads = split, unit, ntasks, nthreads
    job.bal_slot = -1
    if speeds is not None:
        if (len(speeds) != ntasks or ntasks != nthreads or ntasks > FASTNN_POOL_MAX_THREADS
                or (split + unit - 1) // unit < ntasks
                or not all(v > 0 and v == v and v != float("inf") for v in speeds)):
            raise ValueError(f"task_blocks: speeds needs one positive finite value per task, "
                             f"one task per thread (at most {FASTNN_POOL_MAX_THREADS}) and "
                             f"a unit for each; got {speeds!r} for {ntasks} tasks, "
                             f"{nthreads} threads, {(split + unit - 1) // unit} units")
        for t in range(ntasks):
            w[t] = speeds[t]
        job.bal = w
        job.bal_slot = 0
        balance_blocks(&job)
    out = []
    for t in range(ntasks):
        task_range(&job, t, &j0, &j1)
        out.append((j0, j1))
    return out


def pool_tasks_run():
    """(tasks run by calling threads, tasks run by helpers) in pooled regions so far."""
    return fastnn_pool_tasks_run(0), fastnn_pool_tasks_run(1)


def cpu_count():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return fastnn_pool_cpu_count()


POOL_AVAILABLE = bool(FASTNN_HAVE_POOL)
MAX_THREADS = FASTNN_POOL_MAX_THREADS


# ---------------------------------------------------------------- forward

# bias_activate takes an elementwise activation over whole rows as one flat pass over the
# block (the same operations on each element as row by row, so the same bits: the vector
# exp computes every lane alike, its masked tail included)
cdef bint flat_activate = True


def set_flat_activate(bint on):
    """Apply elementwise activations over whole-row blocks in one pass, and form the output
    delta for labels as scale * a then scale * (a - 1) at the label (the default), or both
    row by row; returns the old value. Both give the same bits. For tests and benchmarks."""
    global flat_activate
    old = flat_activate
    flat_activate = on
    return old


cdef void activate_flat(int code, floating* z, Py_ssize_t count) noexcept nogil:
    """z = f(z) elementwise over count contiguous values (f sigmoid, tanh, relu or identity)."""
    cdef Py_ssize_t j
    if code == ACT_SIGMOID:
        if vector_exp:
            for j in range(count):
                z[j] = -z[j]
            exp_inplace(z, count)
            for j in range(count):
                z[j] = 1 / (1 + z[j])
        else:
            for j in range(count):
                z[j] = 1 / (1 + _exp(-z[j]))
    elif code == ACT_TANH:
        for j in range(count):
            z[j] = _tanh(z[j])
    elif code == ACT_RELU:
        for j in range(count):
            z[j] = 0 if z[j] < 0 else z[j]


cdef void bias_activate(int code, floating* Z, const floating* b,
                        Py_ssize_t m, Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1,
                        floating* zout) noexcept nogil:
    """Z[i, j] = f(Z[i, j] + b[j]) in place for the columns j0 <= j < j1 of the
    m rows (row stride n); zout (if not NULL, same layout) gets Z + b. Softmax
    normalizes over the columns given, so it is called with all of them."""
    cdef Py_ssize_t i, j
    cdef floating v, mx, s
    cdef floating* z
    if flat_activate and j0 == 0 and j1 == n and code != ACT_SOFTMAX:
        for i in range(m):
            z = Z + i * n
            if zout != NULL:
                for j in range(n):
                    z[j] = z[j] + b[j]
                    zout[i * n + j] = z[j]
            else:
                for j in range(n):
                    z[j] = z[j] + b[j]
        activate_flat(code, Z, m * n)
        return
    for i in range(m):
        z = Z + i * n
        if zout != NULL:
            for j in range(j0, j1):
                z[j] = z[j] + b[j]
                zout[i * n + j] = z[j]
        else:
            for j in range(j0, j1):
                z[j] = z[j] + b[j]
        if code == ACT_SIGMOID:
            if vector_exp:
                for j in range(j0, j1):
                    z[j] = -z[j]
                exp_inplace(z + j0, j1 - j0)
                for j in range(j0, j1):
                    z[j] = 1 / (1 + z[j])
            else:
                for j in range(j0, j1):
                    z[j] = 1 / (1 + _exp(-z[j]))
        elif code == ACT_TANH:
            for j in range(j0, j1):
                z[j] = _tanh(z[j])
        elif code == ACT_RELU:
            for j in range(j0, j1):
                # keeps NaN as NaN (the comparison is false), so divergence shows; a store on
                # every element, which vectorizes (a conditional store did not)
                z[j] = 0 if z[j] < 0 else z[j]
        elif code == ACT_SOFTMAX:
            mx = z[j0]
            for j in range(j0 + 1, j1):
                if z[j] > mx:
                    mx = z[j]
            s = 0
            if vector_exp:
                for j in range(j0, j1):
                    z[j] = z[j] - mx
                exp_inplace(z + j0, j1 - j0)
                for j in range(j0, j1):
                    s = s + z[j]
            else:
                for j in range(j0, j1):
                    v = _exp(z[j] - mx)
                    z[j] = v
                    s = s + v
            s = 1 / s
            for j in range(j0, j1):
                z[j] = z[j] * s


cdef void forward(const Net* net, const floating* params, const floating* A0,
                  const floating** rows, floating* work, Py_ssize_t m,
                  bint keep_z, const SparseInput* sp=NULL, bint have_a1=False,
                  double* bal=NULL, bint skip_last=False) noexcept nogil:
    """A_1..A_L for the m input rows (A_1..A_{L-1} with ``skip_last``: the tail region
    forms A_L; see fused_tail).

    The layers that ``small_layer`` accepts use the small-batch kernels,
    which read rows through pointers: ``rows`` holds ``m * (L + 1)`` slots,
    the first m already pointing at the input rows (anywhere in memory), and
    the rest are filled here (``rows[l*m + i]`` = row i of A_l) for
    ``backward_update``. The others use BLAS on the contiguous ``A0`` (row
    stride sizes[0]) or A_l. Each layer's product and activation run as one
    parallel region over blocks of its outputs or rows. With ``have_a1``, A_1 is
    already in place (the previous step's fused update formed it; see backward_update).
    """
    cdef int l
    cdef Py_ssize_t i
    cdef int n_out
    cdef bint small = False
    cdef floating* Z
    cdef Job job
    init_job(&job, JOB_FORWARD, net, m, <void*>params, NULL, NULL, NULL, <void*>work,
             <const void*>A0, <const void**>rows, small, NULL)
    job.f32 = floating is float
    job.keep_z = keep_z
    job.sp = sp
    job.bal = bal
    for l in range(net.L):
        n_out = net.sizes[l + 1]
        Z = act_ptr(net, work, m, l + 1)
        for i in range(m):
            rows[(l + 1) * m + i] = Z + i * n_out
        if l == 0 and have_a1 or skip_last and l == net.L - 1:
            continue
        job.l = l
        job.small = small_layer(net, l, m, sizeof(floating))
        run_job(&job)


# ---------------------------------------------------------------- backward

cdef inline floating target(const floating* Y, const Py_ssize_t* labels,
                            Py_ssize_t row, Py_ssize_t j, Py_ssize_t n_out) noexcept nogil:
    """y_j of a row: from the target matrix, or one-hot from the label."""
    if Y != NULL:
        return Y[row * n_out + j]
    if n_out == 1:
        return <floating>labels[row]
    return 1 if labels[row] == j else 0


cdef void output_delta(const Net* net, floating* work, Py_ssize_t m,
                       const floating* Y, const Py_ssize_t* labels,
                       const Py_ssize_t* idx, floating scale) noexcept nogil:
    """D_L = scale * dC0/dZ_L for each of the m rows (see output_delta_rows)."""
    output_delta_rows(net, work, m, 0, m, Y, labels, idx, scale)


cdef void output_delta_rows(const Net* net, floating* work, Py_ssize_t m, Py_ssize_t i0,
                            Py_ssize_t i1, const floating* Y, const Py_ssize_t* labels,
                            const Py_ssize_t* idx, floating scale) noexcept nogil:
    """D_L = scale * dC0/dZ_L for the rows i0 <= i < i1 of the m.

    Row i of the batch is sample ``idx[i]`` (or i when idx is NULL) of Y or labels.
    Matching pairs (sigmoid + cross-entropy, softmax + log-likelihood) give
    ``a - y``; the quadratic cost gives ``(a - y) f'(z)`` (for softmax, the
    Jacobian product ``a * (r - <r, a>)``).
    """
    cdef int L = net.L
    cdef Py_ssize_t n = net.sizes[L]
    cdef int code = net.acts[L - 1]
    cdef floating* A = act_ptr(net, work, m, L)
    cdef floating* D = delta_ptr(net, work, m, L)
    cdef Py_ssize_t i, j, row
    cdef floating a, r, s
    if flat_activate and Y == NULL and n > 1 and net.cost != COST_QUADRATIC:
        # one-hot targets from the labels: scale * (a - 0) for every entry, then
        # scale * (a - 1) at the label (the same bits as entry by entry)
        for i in range(i0 * n, i1 * n):
            D[i] = scale * A[i]
        for i in range(i0, i1):
            row = idx[i] if idx != NULL else i
            j = labels[row]
            if 0 <= j < n:
                D[i * n + j] = scale * (A[i * n + j] - <floating>1)
        return
    for i in range(i0, i1):
        row = idx[i] if idx != NULL else i
        if net.cost == COST_LOG_LIKELIHOOD and Y != NULL:
            # C0 = sum_j y_j (logsumexp(z) - z_j): dC0/dz = (sum_j y_j) a - y,
            # which is a - y for rows that sum to 1 (one-hot or probabilities)
            s = 0
            for j in range(n):
                s = s + Y[row * n + j]
            for j in range(n):
                D[i * n + j] = scale * (s * A[i * n + j] - Y[row * n + j])
            continue
        for j in range(n):
            D[i * n + j] = scale * (A[i * n + j] - target(Y, labels, row, j, n))
        if net.cost != COST_QUADRATIC:
            continue
        if code == ACT_SIGMOID:
            for j in range(n):
                a = A[i * n + j]
                D[i * n + j] *= a * (1 - a)
        elif code == ACT_TANH:
            for j in range(n):
                a = A[i * n + j]
                D[i * n + j] *= 1 - a * a
        elif code == ACT_RELU:
            for j in range(n):
                if not (A[i * n + j] > 0):
                    D[i * n + j] = 0
        elif code == ACT_SOFTMAX:
            s = 0
            for j in range(n):
                s = s + D[i * n + j] * A[i * n + j]
            for j in range(n):
                D[i * n + j] = A[i * n + j] * (D[i * n + j] - s)


cdef void times_derivative(int code, floating* D, const floating* A,
                           Py_ssize_t count) noexcept nogil:
    """D *= f'(z), with f' written in terms of a = f(z)."""
    cdef Py_ssize_t i
    if code == ACT_SIGMOID:
        for i in range(count):
            D[i] = D[i] * (A[i] * (1 - A[i]))
    elif code == ACT_TANH:
        for i in range(count):
            D[i] = D[i] * (1 - A[i] * A[i])
    elif code == ACT_RELU:
        # a store on every element (NaN in A gives 0, as "not A > 0" did), which the
        # compiler turns into vector blends; a conditional store stayed a scalar loop
        for i in range(count):
            D[i] = D[i] if A[i] > 0 else 0


cdef void backward(const Net* net, const floating* params, floating* grad,
                   const floating* A0, floating* work, Py_ssize_t m,
                   bint accumulate, const floating** rows=NULL,
                   const SparseInput* sp=NULL) noexcept nogil:
    """grad (+)= dC/dparams from D_L; D_L must be set. Never computes D_0.

    Per layer, from the top: ``gW = D^T A`` (parallel over blocks of W's
    rows), ``gb = sum_rows D``, then ``D_l = (D_{l+1} W_l) * f'(A_l)``
    (parallel over blocks of D_l's columns). With ``sp``, layer 0's weight gradient
    is added to ``sp.gt`` (its transpose) by sparse_tn over the input ``rows``
    instead."""
    cdef int l
    cdef Py_ssize_t i, j
    cdef int n_in, n_out
    cdef floating* D
    cdef floating* gb
    cdef Job job
    init_job(&job, JOB_GRAD, net, m, <void*>params, <void*>grad, NULL, NULL, <void*>work,
             <const void*>A0, <const void**>rows, False, NULL)
    job.f32 = floating is float
    job.accumulate = accumulate
    job.sp = sp
    for l in range(net.L - 1, -1, -1):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        D = delta_ptr(net, work, m, l + 1)
        gb = grad + net.woff[l] + <Py_ssize_t>n_out * n_in
        job.l = l
        job.kind = JOB_GRAD
        run_job(&job)
        if not accumulate:
            for j in range(n_out):
                gb[j] = 0
        for i in range(m):
            for j in range(n_out):
                gb[j] = gb[j] + D[i * n_out + j]
        if l > 0:
            job.kind = JOB_DELTA
            run_job(&job)


# ---------------------------------------------------------------- updates

cdef enum:
    RULE_PLAIN = 0
    RULE_MOMENTUM = 1
    RULE_NESTEROV = 2
    RULE_ADAM = 3


cdef struct Rule:
    # One optimizer step's constants. l2 multiplies W in the gradient; the
    # caller sets it per step (lmbda/n, or lmbda/m for scikit-learn's alpha).
    int mode
    double eta, mu, l2
    double beta1, beta2, eps, lr_t   # Adam; lr_t = eta sqrt(1-beta2^t)/(1-beta1^t)


cdef int update_segment(floating* p, const floating* g, floating* v, floating* s,
                        Py_ssize_t n, const Rule* r, bint weights,
                        double* wsq=NULL) noexcept nogil:
    """One pass over a segment; returns 1 if a new value is not finite.

    With g the mean gradient of the batch and l2 applied to weights only
    (``weights`` false for biases):

    plain:     p = (1 - eta l2) p - eta g
    momentum:  v = mu v - eta (g + l2 p);  p = p + v
    Nesterov:  v = mu v - eta (g + l2 p);  p = p + (mu v - eta (g + l2 p))
    Adam:      G = g + l2 p;  v = b1 v + (1 - b1) G;  s = b2 s + (1 - b2) G^2;
               p = p - lr_t v / (sqrt(s) + eps)   (scikit-learn's rule)

    Finiteness is tracked as ``chk = sum(w - w)`` over the new values: every
    term is 0 for a finite w and NaN otherwise, so chk is exactly 0 or NaN in
    any order of summation, and the loops still vectorize. With ``wsq``, the
    sum of the squares of the new values (in double) is stored there.
    """
    cdef Py_ssize_t i
    cdef floating w, vi, si, gg
    cdef floating eta = <floating>r.eta
    cdef floating mu = <floating>r.mu
    cdef floating l2 = <floating>r.l2 if weights else 0
    cdef floating c = 1 - eta * l2
    cdef floating b1 = <floating>r.beta1, b2 = <floating>r.beta2
    # 1 - beta in double, then rounded once: 1 - 0.999f in float32 is 1.3e-5 off
    cdef floating c1 = <floating>(1 - r.beta1), c2 = <floating>(1 - r.beta2)
    cdef floating eps = <floating>r.eps, lr_t = <floating>r.lr_t
    cdef floating chk = 0
    if vector_update:
        # the same arithmetic, in AVX2 vectors (_small_impl.h)
        if floating is float:
            return update_seg_s(p, g, v, s, n, r.mode, eta, mu, l2, b1, b2, c1, c2, eps, lr_t,
                                wsq)
        else:
            return update_seg_d(p, g, v, s, n, r.mode, eta, mu, l2, b1, b2, c1, c2, eps, lr_t,
                                wsq)
    if r.mode == RULE_PLAIN:
        for i in range(n):
            w = c * p[i] - eta * g[i]
            p[i] = w
            chk = chk + (w - w)
    elif r.mode == RULE_MOMENTUM:
        for i in range(n):
            vi = mu * v[i] - eta * (g[i] + l2 * p[i])
            v[i] = vi
            w = p[i] + vi
            p[i] = w
            chk = chk + (w - w)
    elif r.mode == RULE_NESTEROV:
        for i in range(n):
            gg = g[i] + l2 * p[i]
            vi = mu * v[i] - eta * gg
            v[i] = vi
            w = p[i] + (mu * vi - eta * gg)
            p[i] = w
            chk = chk + (w - w)
    else:
        for i in range(n):
            gg = g[i] + l2 * p[i]
            vi = b1 * v[i] + c1 * gg
            si = b2 * s[i] + c2 * (gg * gg)
            v[i] = vi
            s[i] = si
            w = p[i] - lr_t * vi / (_sqrt(si) + eps)
            p[i] = w
            chk = chk + (w - w)
    if wsq != NULL:
        if floating is float:
            wsq[0] = fastnn_sumsq_s(p, n)
        else:
            wsq[0] = fastnn_sumsq_d(p, n)
    return not (chk == 0)


cdef int apply_update(const Net* net, floating* params, const floating* grad,
                      floating* vel, floating* sq, const Rule* r) noexcept nogil:
    """The update over the whole buffer, layer by layer; L2 on weights only.

    Returns 1 if any new parameter is not finite."""
    cdef int l, bad = 0
    cdef Py_ssize_t nw, off
    for l in range(net.L):
        off = net.woff[l]
        nw = <Py_ssize_t>net.sizes[l + 1] * net.sizes[l]
        bad |= update_segment(params + off, grad + off, vel + off, sq + off, nw, r, True)
        bad |= update_segment(params + off + nw, grad + off + nw, vel + off + nw,
                              sq + off + nw, net.sizes[l + 1], r, False)
    return bad


cdef extern from "_small.h" nogil:
    int fastnn_small_available()
    void fastnn_exp_inplace_s(float* x, Py_ssize_t n)
    void fastnn_exp_inplace_d(double* x, Py_ssize_t n)
    int fastnn_nonfinite_s(const float* x, Py_ssize_t n)
    int fastnn_nonfinite_d(const double* x, Py_ssize_t n)
    int update_seg_d(double* p, const double* g, double* v, double* s, Py_ssize_t n, int mode,
                     double eta, double mu, double l2, double b1, double b2, double c1,
                     double c2, double eps, double lr_t, double* wsq)
    int update_seg_s(float* p, const float* g, float* v, float* s, Py_ssize_t n, int mode,
                     float eta, float mu, float l2, float b1, float b2, float c1,
                     float c2, float eps, float lr_t, double* wsq)
    double fastnn_sumsq_d(const double* x, Py_ssize_t n)
    double fastnn_sumsq_s(const float* x, Py_ssize_t n)
    void small_nt_d(const double** Ar, const double* W, double* Z,
                    Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t ldz)
    void small_nt_s(const float** Ar, const float* W, float* Z,
                    Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t ldz)
    ctypedef struct adam_consts_d:
        double b1, b2, c1, c2, eps, lr_t
    ctypedef struct adam_consts_s:
        float b1, b2, c1, c2, eps, lr_t
    ctypedef struct fastnn_pf_plan:
        const char* X
        const Py_ssize_t* idx
        Py_ssize_t row_bytes, lines, q0, q1
    ctypedef struct fastnn_next_fwd:
        const void* const* rows
        Py_ssize_t m, ldz
        void* Z
    int small_tn_update_d(const double* D, Py_ssize_t ldd, const double** Ar, Py_ssize_t a_off,
                          double* W, double* V, double* S, Py_ssize_t ldw, Py_ssize_t m,
                          Py_ssize_t n, Py_ssize_t k, int mode, double eta, double mu, double l2,
                          const adam_consts_d* ac, void* scratch, double* wsq,
                          const fastnn_pf_plan* pf, const fastnn_next_fwd* nf,
                          double sparse_max)
    int small_tn_update_s(const float* D, Py_ssize_t ldd, const float** Ar, Py_ssize_t a_off,
                          float* W, float* V, float* S, Py_ssize_t ldw, Py_ssize_t m,
                          Py_ssize_t n, Py_ssize_t k, int mode, float eta, float mu, float l2,
                          const adam_consts_s* ac, void* scratch, double* wsq,
                          const fastnn_pf_plan* pf, const fastnn_next_fwd* nf,
                          double sparse_max)
    Py_ssize_t small_tn_scratch_bytes_d(Py_ssize_t m, Py_ssize_t n)
    Py_ssize_t small_tn_scratch_bytes_s(Py_ssize_t m, Py_ssize_t n)
    void sumsq_col_units_d(const double* W, Py_ssize_t ldw, Py_ssize_t n, Py_ssize_t c0,
                           Py_ssize_t c1, Py_ssize_t unit, double* out)
    void sumsq_col_units_s(const float* W, Py_ssize_t ldw, Py_ssize_t n, Py_ssize_t c0,
                           Py_ssize_t c1, Py_ssize_t unit, double* out)
    int fastnn_nt_tiled_rows_s
    Py_ssize_t fastnn_l2_bytes()
    void small_nn_d(const double* D, Py_ssize_t ldd, const double* W, Py_ssize_t ldw, double* Z,
                    Py_ssize_t ldz, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k)
    void small_nn_s(const float* D, Py_ssize_t ldd, const float* W, Py_ssize_t ldw, float* Z,
                    Py_ssize_t ldz, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k)
    int fastnn_nt_tiled_rows_d
    int fastnn_nt_prefetch_next
    int fastnn_nt_rows_tiling
    int fastnn_nt_tiles_outer
    int tn_pf_strip


cdef inline Py_ssize_t nt_tiled_rows(bint f32) noexcept nogil:
    """Largest batch whose small forward product takes the k-tiled kernel (see small_nt)."""
    return fastnn_nt_tiled_rows_s if f32 else fastnn_nt_tiled_rows_d


def set_update_strip_prefetch(bint on):
    """Let the fused update prefetch the batch's strip after next as it packs a strip;
    returns the old value. For tests and benchmarks."""
    global tn_pf_strip
    old = bool(tn_pf_strip)
    tn_pf_strip = on
    return old


# The fused update skips the batch rows whose delta is zero (TN_SPARSE_STRIPS in
# _small_impl.h: a ReLU layer's delta is zero wherever its unit is off, which after the
# first epoch is about 80 % of entries for C3 and Fashion-MNIST) when at most this fraction
# of the delta's entries is non-zero. In one process, alternating epochs: C3 (generated
# data, as benchmarks/compare.py makes them) 0.873x the time. In the C harness (C3's
# update) the sparse variant ran 1.65x as fast as the dense one at 20 % non-zeros, 1.25x
# at 35 %, the same at 50 %.
cdef double fused_sparse_max = 0.4


def set_fused_sparse(double max_density):
    """The largest fraction of non-zero entries in a layer's delta at which the fused
    update skips the batch rows whose delta is zero, row of W by row (0: never); returns the
    old value. For tests and benchmarks."""
    global fused_sparse_max
    if not 0 <= max_density <= 1:
        raise ValueError(f"set_fused_sparse: max_density must be in [0, 1]; got {max_density}")
    old = fused_sparse_max
    fused_sparse_max = max_density
    return old


def set_forward_tiling(bint on):
    """Let the small forward kernel's row-block variant cut the fan-in into tiles where 4
    rows of the batch outgrow 16 KiB (float64 above 512 inputs, float32 above 1024: the
    default); returns the old value. Either way each output is a sum of dot products over
    the tiles, in order; off, there is one tile. For tests and benchmarks."""
    global fastnn_nt_rows_tiling
    old = bool(fastnn_nt_rows_tiling)
    fastnn_nt_rows_tiling = on
    return old


def set_forward_tiles_outer(bint on):
    """Let the row-block kernel, where it cuts the fan-in into tiles, take every block of
    rows through tile 0, then through tile 1, ... (the default) rather than each block
    through all the tiles in turn; returns the old value. The same sums in the same order
    either way. For tests and benchmarks."""
    global fastnn_nt_tiles_outer
    old = bool(fastnn_nt_tiles_outer)
    fastnn_nt_tiles_outer = on
    return old


def set_forward_prefetch(bint on):
    """Let the small forward kernel's row-block variant prefetch the next block's rows
    while it computes (the default); returns the old value. For tests and benchmarks."""
    global fastnn_nt_prefetch_next
    old = bool(fastnn_nt_prefetch_next)
    fastnn_nt_prefetch_next = on
    return old


def set_tiled_max_rows(int float32_rows, int float64_rows):
    """Largest batch for which the small forward kernel reads W once per call (k-tiled)
    instead of once per 4 rows, per dtype; returns the old (float32, float64) pair. For
    tests and benchmarks."""
    global fastnn_nt_tiled_rows_s, fastnn_nt_tiled_rows_d
    old = (fastnn_nt_tiled_rows_s, fastnn_nt_tiled_rows_d)
    fastnn_nt_tiled_rows_s = float32_rows
    fastnn_nt_tiled_rows_d = float64_rows
    return old

# With AVX2 and FMA, batches of at most small_max_rows rows compute their
# forward products with the small-batch kernels of _small.h, and batches of at
# most fused_max_rows rows form each weight gradient block in registers and
# apply the update to it at once (the gradient never goes through memory).
# Larger batches, and other CPUs, use BLAS followed by the one-pass update.
# The thresholds were measured against SciPy's OpenBLAS on this project's machine: with
# 4 x 3 register blocks the forward kernel runs at 35-44 GMAC/s (float32, one core) for
# batches of 64-128 rows and weights that stay in L2, where sgemm gives 29-32 and needs
# the batch gathered; BLAS wins for large weight matrices (small_max_w_bytes).
SMALL_KERNELS_AVAILABLE = bool(fastnn_small_available())
# update_segment runs its AVX2 twin (identical results) where the CPU has it
cdef bint vector_update = SMALL_KERNELS_AVAILABLE
# sigmoid and softmax take e^x from the AVX2 exp of _small.h (within 2 ulp of libm's)
cdef bint vector_exp = SMALL_KERNELS_AVAILABLE


def set_vector_exp(bint on):
    """Use the AVX2 exp for sigmoid and softmax (when available); returns the old value."""
    global vector_exp
    old = vector_exp
    vector_exp = on and SMALL_KERNELS_AVAILABLE
    return old


cdef inline void exp_inplace(floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastnn_exp_inplace_s(x, n)
    else:
        fastnn_exp_inplace_d(x, n)


def set_vector_update(bint on):
    """Use the AVX2 twin of update_segment (when available); returns the old value.
    For tests: both give identical results."""
    global vector_update
    old = vector_update
    vector_update = on and SMALL_KERNELS_AVAILABLE
    return old
cdef Py_ssize_t small_max_rows = 256 if SMALL_KERNELS_AVAILABLE else 0
# ... and only for layers whose weights take at most this many bytes: the small kernels
# stream all of W past every 4 rows of the batch, which BLAS's blocking beats for large W
cdef Py_ssize_t small_max_w_bytes = 1 << 20


cdef inline bint small_layer(const Net* net, int l, Py_ssize_t m, size_t itemsize) noexcept nogil:
    """Whether layer l's forward product for m rows runs in the small-batch kernel."""
    return (m <= small_max_rows and
            <Py_ssize_t>net.sizes[l + 1] * net.sizes[l] * <Py_ssize_t>itemsize <= small_max_w_bytes)


# The small forward kernel's tasks split W's rows rather than the batch's once W is
# larger than this (each task's block of W then stays in one core's L2 while the batch
# streams past it; S1 of benchmarks/sklearn_compare.py, 627 KiB of float64 W: 4 % less
# time per epoch)
cdef Py_ssize_t fwd_cols_min_w_bytes = 256 * 1024


def set_forward_split_bytes(Py_ssize_t nbytes):
    """Size of W (bytes) above which the small forward kernel's tasks split W's rows
    rather than the batch's; returns the old value. For tests and benchmarks."""
    global fwd_cols_min_w_bytes
    old = fwd_cols_min_w_bytes
    fwd_cols_min_w_bytes = nbytes
    return old


def set_small_max_w_bytes(Py_ssize_t nbytes):
    """Largest weight matrix (bytes) whose forward product may use the small-batch
    kernel; returns the old value."""
    global small_max_w_bytes
    old = small_max_w_bytes
    small_max_w_bytes = nbytes
    return old
cdef Py_ssize_t fused_max_rows = 256 if SMALL_KERNELS_AVAILABLE else 0
# ... and only while the layer's gradient product (m x fan-in x fan-out) is small
# enough that BLAS's cache blocking would not gain (the fused kernel streams all
# of a W block past every batch row); the same bound as fit's blas_threads="auto"
# (training.AUTO_SINGLE_THREAD_MACS).
cdef enum:
    FUSED_MAX_MACS = 1 << 24


# With batches large enough for the fused kernel to pack the batch's strips (at least
# TN_PACK_MIN_ROWS rows), its tasks split W by columns: each task then packs and reads only
# its columns of the batch. Split by W's rows, every task packed and read all of them
# (interleaved epochs with 2 threads: C2 14-19 %, C3 about 4 % less time per epoch).
cdef enum:
    FUSED_COLS_MIN_ROWS = 32
cdef bint fused_split_cols = True


def set_fused_split_cols(bint on):
    """Let the fused kernel split W by columns between its tasks for batches of at least
    32 rows (else always by rows); returns the old value. For tests and benchmarks."""
    global fused_split_cols
    old = fused_split_cols
    fused_split_cols = on
    return old


# Adam takes the fused kernel too (its two moments updated in the same pass)
cdef bint fused_adam = True


def set_fused_adam(bint on):
    """Let Adam steps take the fused gradient-and-update kernel (when the batch and layer
    qualify); returns the old value. For tests and benchmarks."""
    global fused_adam
    old = fused_adam
    fused_adam = on
    return old


cdef inline bint fused_layer(const Net* net, int l, Py_ssize_t m, int mode) noexcept nogil:
    """Whether layer l's weight gradient for m rows is formed and applied by the fused
    small-batch kernel (which reads the rows through pointers), not by BLAS."""
    return (m <= fused_max_rows and (mode != RULE_ADAM or fused_adam)
            and m * <Py_ssize_t>net.sizes[l] * net.sizes[l + 1] <= FUSED_MAX_MACS)


def set_fused_max_rows(Py_ssize_t rows):
    """Largest batch whose weight gradient is fused with the update; returns the old value."""
    global fused_max_rows
    old = fused_max_rows
    fused_max_rows = rows if SMALL_KERNELS_AVAILABLE else 0
    return old


def get_small_max_rows():
    """Largest batch that uses the small-batch forward kernel (0: never)."""
    return small_max_rows


def get_fused_max_rows():
    """Largest batch whose weight gradient is fused with the update (0: never)."""
    return fused_max_rows


def set_small_max_rows(Py_ssize_t rows):
    """Set the largest batch for the small-batch forward kernel (0 disables it).

    Returns the old value. Both paths compute the same update up to rounding;
    the switch exists for tests and benchmarks. Ignored (stays 0) on CPUs
    without AVX2 and FMA.
    """
    global small_max_rows
    old = small_max_rows
    small_max_rows = rows if SMALL_KERNELS_AVAILABLE else 0
    return old


cdef inline void small_nt(const floating** Ar, const floating* W, floating* Z,
                          Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t ldz) noexcept nogil:
    if floating is float:
        small_nt_s(Ar, W, Z, m, n, k, ldz)
    else:
        small_nt_d(Ar, W, Z, m, n, k, ldz)


cdef inline void small_nn(const floating* D, Py_ssize_t ldd, const floating* W, Py_ssize_t ldw,
                          floating* Z, Py_ssize_t ldz, Py_ssize_t m, Py_ssize_t n,
                          Py_ssize_t k) noexcept nogil:
    """Z = D W (see _small_impl.h)."""
    if floating is float:
        small_nn_s(D, ldd, W, ldw, Z, ldz, m, n, k)
    else:
        small_nn_d(D, ldd, W, ldw, Z, ldz, m, n, k)


# A delta product of at most small_delta_max_macs multiply-adds is formed by small_nn rather
# than BLAS, whose call costs more than such a product. Measured per epoch (the delta phase,
# with its activation derivative): C1 (10 x 10 x 30, float64) 5-6 -> 3 ms and S2's net
# (10 x 10 x 100) 4.8-6 -> 4.2-4.7 ms with small_nn; C2 (128 x 10 x 30) the same either way;
# C3 (64 x 10 x 100) 4.2 ms with BLAS, 5.9 with small_nn, on one thread. The bound takes C2's
# and C3's delta into the tail region (see fused_tail), which needs small_nn (its rows get
# the same bits in any block of the batch; BLAS's do not): there, on 2 threads, C2's tail
# took 16.2 us per step with small_nn against 19.0 with BLAS's delta, C3's 12.3 either way.
cdef Py_ssize_t small_delta_max_macs = (1 << 17) if SMALL_KERNELS_AVAILABLE else -1


def set_small_delta_max_macs(Py_ssize_t macs):
    """Largest delta product (multiply-adds) that small_nn, not BLAS, forms (negative:
    never); returns the old value. For tests and benchmarks."""
    global small_delta_max_macs
    old = small_delta_max_macs
    small_delta_max_macs = macs if SMALL_KERNELS_AVAILABLE else -1
    return old


cdef inline bint small_delta(const Net* net, int l, Py_ssize_t m) noexcept nogil:
    """Whether small_nn propagates the delta of m rows back through layer l's W."""
    return m * net.sizes[l] * <Py_ssize_t>net.sizes[l + 1] <= small_delta_max_macs


cdef inline int small_tn_update(const floating* D, Py_ssize_t ldd, const floating** Ar,
                                Py_ssize_t a_off, floating* W, floating* V, floating* S,
                                Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                const Rule* r, void* scratch, double* wsq,
                                const fastnn_pf_plan* pf,
                                const fastnn_next_fwd* nf=NULL,
                                double sparse_max=0) noexcept nogil:
    """The fused gradient-and-update of W (see _small_impl.h) under rule r, with the
    constants rounded to the element type as update_segment rounds them; rows of the batch
    whose delta is zero skipped where at most sparse_max of its entries are not."""
    cdef adam_consts_s acs
    cdef adam_consts_d acd
    if floating is float:
        acs.b1 = <float>r.beta1
        acs.b2 = <float>r.beta2
        acs.c1 = <float>(1 - r.beta1)
        acs.c2 = <float>(1 - r.beta2)
        acs.eps = <float>r.eps
        acs.lr_t = <float>r.lr_t
        return small_tn_update_s(D, ldd, Ar, a_off, W, V, S, ldw, m, n, k, r.mode,
                                 <float>r.eta, <float>r.mu, <float>r.l2, &acs, scratch, wsq, pf,
                                 nf, sparse_max)
    else:
        acd.b1 = r.beta1
        acd.b2 = r.beta2
        acd.c1 = 1 - r.beta1
        acd.c2 = 1 - r.beta2
        acd.eps = r.eps
        acd.lr_t = r.lr_t
        return small_tn_update_d(D, ldd, Ar, a_off, W, V, S, ldw, m, n, k, r.mode,
                                 r.eta, r.mu, r.l2, &acd, scratch, wsq, pf, nf, sparse_max)


cdef Py_ssize_t tn_scratch_bytes(const Net* net, Py_ssize_t m, size_t itemsize,
                                 int mode) noexcept nogil:
    """Scratch per task of the fused kernel for batches of at most m rows (a multiple of 64
    bytes): the packed delta of its block of W's rows (at most a whole layer) and a strip,
    for the largest batch of at most m rows that fused_layer lets each layer take."""
    cdef Py_ssize_t most = 64, b, ml
    cdef int l
    for l in range(net.L):
        ml = min(m, fused_max_rows,
                 FUSED_MAX_MACS // max(1, <Py_ssize_t>net.sizes[l] * net.sizes[l + 1]))
        if ml < 1 or not fused_layer(net, l, ml, mode):
            continue
        if itemsize == sizeof(float):
            b = small_tn_scratch_bytes_s(ml, net.sizes[l + 1])
        else:
            b = small_tn_scratch_bytes_d(ml, net.sizes[l + 1])
        most = max(most, b)
    return (most + 63) // 64 * 64


cdef int backward_update(const Net* net, floating* params, floating* grad,
                         floating* vel, floating* sq, const floating* A0,
                         const floating** rows, floating* work, Py_ssize_t m,
                         const Rule* r, char* tn_scratch,
                         Py_ssize_t tn_scratch_bytes, double* wnorm=NULL,
                         const floating* X=NULL, const Py_ssize_t* next_idx=NULL,
                         Py_ssize_t next_m=0, const floating** next_rows=NULL,
                         Py_ssize_t next_fwd_m=0, floating* next_work=NULL,
                         bint* formed_a1=NULL, double* bal=NULL,
                         bint sparse_delta=False, bint top_delta_done=False) noexcept nogil:
    """Backward pass that updates each layer as soon as its delta is known.

    Going down from the output, layer l first propagates the delta with its
    old weights, ``D_l = (D_{l+1} W_l) * f'(A_l)``, then applies the update to
    W_l and b_l: for small batches (SGD rules) the gradient is formed and
    applied in one pass (``small_tn_update``), otherwise BLAS writes it into
    ``grad`` and ``update_segment`` applies it. Both run as parallel regions
    over blocks (columns of D_l, rows of W_l). Returns 1 if a new parameter
    is not finite. With ``wnorm``, the sum of the squares of all the new weights
    (biases excluded) is stored there, formed by the update passes themselves. With
    ``next_m`` > 0, layer 0's fused update asks the cache for the next batch's rows of X
    (``X + next_idx[i] * sizes[0]``) a few lines at a time as it goes (see
    update_prefetch_bytes). With ``next_fwd_m`` > 0 (see next_forward_fits), layer 0's
    fused update also forms the next batch's A_1 = f(X_next W_0^T + b_0) with the new
    parameters, for the rows ``next_rows`` into ``next_work`` (so the next step's forward
    starts at layer 1) where run_job lets it (``formed_a1`` says whether it did). The
    biases are therefore updated before the weights. ``bal`` holds the threads' speeds
    (see balance_blocks; NULL: equal blocks). With ``sparse_delta``, the fused update of a
    ReLU layer skips the batch rows whose delta is zero when at most fused_sparse_max of it
    is non-zero (see set_fused_sparse). With ``top_delta_done``, D_{L-1} is already in
    place (the tail region formed it; see fused_tail).
    """
    cdef int l, t, bad = 0
    cdef double norm = 0
    cdef Py_ssize_t i, j, nw
    cdef int n_in, n_out
    cdef floating* D
    cdef floating* gb
    cdef Py_ssize_t off
    cdef Job job
    init_job(&job, JOB_DELTA, net, m, <void*>params, <void*>grad, <void*>vel, <void*>sq,
             <void*>work, <const void*>A0, <const void**>rows, False, r)
    job.f32 = floating is float
    job.tn_scratch = tn_scratch
    job.tn_scratch_bytes = tn_scratch_bytes
    job.want_sq = wnorm != NULL
    job.X = <const void*>X
    job.pf_idx = next_idx
    job.pf_m = next_m if X != NULL and next_idx != NULL else 0
    job.bal = bal
    for l in range(net.L - 1, -1, -1):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        nw = <Py_ssize_t>n_out * n_in
        off = net.woff[l]
        D = delta_ptr(net, work, m, l + 1)
        job.l = l
        if l > 0 and not (top_delta_done and l == net.L - 1):
            job.kind = JOB_DELTA
            run_job(&job)
        gb = grad + off + nw
        for j in range(n_out):
            gb[j] = 0
        for i in range(m):
            for j in range(n_out):
                gb[j] = gb[j] + D[i * n_out + j]
        bad |= update_segment(params + off + nw, gb, vel + off + nw, sq + off + nw, n_out, r, False)
        job.kind = JOB_GRAD_UPDATE
        job.small = fused_layer(net, l, m, r.mode)
        # only a ReLU layer's delta has exact zeros to skip (elsewhere the kernel would count
        # D's non-zeros every step only to find too many)
        job.sparse_max = fused_sparse_max if sparse_delta and net.acts[l] == ACT_RELU else 0
        if l == 0 and next_fwd_m > 0:
            job.nf_rows = <const void**>next_rows
            job.nf_m = next_fwd_m
            job.nf_work = <void*>next_work
        bad |= run_job(&job)
        if l == 0 and formed_a1 != NULL:
            formed_a1[0] = job.nf_m > 0
        if wnorm != NULL:
            for t in range(job.ntasks):
                norm += job.wsq[t]
    if wnorm != NULL:
        wnorm[0] = norm
    return bad




# ---------------------------------------------------------------- cost

cdef inline double softplus(double z) noexcept nogil:
    """ln(1 + e^z), stable for large |z|."""
    return (z if z > 0 else 0.0) + log1p(exp(-fabs(z)))


cdef double row_cost(const Net* net, const floating* z, const floating* a,
                     const floating* Y, const Py_ssize_t* labels,
                     Py_ssize_t row) noexcept nogil:
    """C0 of one sample, from the output pre-activations z and activations a.

    cross-entropy: sum_j softplus(z_j) - y_j z_j  (= -[y ln a + (1-y) ln(1-a)])
    log-likelihood: sum_j y_j (logsumexp(z) - z_j)  (= -ln a_y for labels)
    quadratic: 1/2 ||a - y||^2
    """
    cdef Py_ssize_t n = net.sizes[net.L]
    cdef Py_ssize_t j
    cdef double c = 0, d, y, mx, lse
    if net.cost == COST_QUADRATIC:
        for j in range(n):
            d = a[j] - target(Y, labels, row, j, n)
            c += 0.5 * d * d
    elif net.cost == COST_CROSS_ENTROPY:
        for j in range(n):
            c += softplus(z[j]) - target(Y, labels, row, j, n) * z[j]
    else:
        mx = z[0]
        for j in range(1, n):
            if z[j] > mx:
                mx = z[j]
        lse = 0
        for j in range(n):
            lse += exp(z[j] - mx)
        lse = mx + log(lse)
        if Y == NULL:
            c = lse - z[labels[row]]
        else:
            for j in range(n):
                y = Y[row * n + j]
                if y != 0:
                    c += y * (lse - z[j])
    return c


cdef inline Py_ssize_t argmax(const floating* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j, best = 0
    for j in range(1, n):
        if a[j] > a[best]:
            best = j
    return best


cdef inline Py_ssize_t row_class(const floating* a, Py_ssize_t n) noexcept nogil:
    if n == 1:
        return 1 if a[0] > 0.5 else 0
    return argmax(a, n)


cdef Py_ssize_t true_class(const floating* Y, const Py_ssize_t* labels,
                           Py_ssize_t row, Py_ssize_t n) noexcept nogil:
    if Y == NULL:
        return labels[row]
    return row_class(Y + row * n, n)


# ---------------------------------------------------------------- Python API

cdef inline const floating* opt_ptr2(const floating[:, ::1] Y) noexcept nogil:
    return &Y[0, 0] if Y.shape[0] > 0 else NULL


cdef inline const Py_ssize_t* opt_labels(const Py_ssize_t[::1] labels) noexcept nogil:
    return &labels[0] if labels.shape[0] > 0 else NULL


cdef Py_ssize_t[::1] row_slots(const Net* net, Py_ssize_t m):
    """Storage for the ``m * (L + 1)`` row pointers of ``forward``'s small path
    (any batch of at most m rows, the last partial one included, may take it)."""
    return np.empty(max(m, 1) * (net.L + 1), dtype=np.intp)


cdef inline void point_rows(const floating** rows, const floating* X, Py_ssize_t first,
                            Py_ssize_t m, Py_ssize_t n0) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(m):
        rows[i] = X + (first + i) * n0


cdef double sample_density(const floating[:, ::1] X):
    """Share of non-zero elements in up to 256 rows spread evenly over X."""
    cdef Py_ssize_t n = X.shape[0], k = X.shape[1], rows = min(n, 256), i, j, r, nz = 0
    if n == 0 or k == 0:
        return 1.0
    with nogil:
        for i in range(rows):
            r = i * n // rows
            for j in range(k):
                nz += X[r, j] != 0
    return nz / <double>(rows * k)


cdef SparseInput* plan_sparse(SparseInput* sp, const Net* net, const floating[::1] params,
                              const floating[:, ::1] X, bint want_grad, list keep):
    """Fill sp for layer 0 on X and return it, or NULL when the dense path is the one to
    take. The arrays it allocates are appended to keep (alive for the call)."""
    cdef Py_ssize_t n_in = net.sizes[0], n_out = net.sizes[1], o, j
    cdef Py_ssize_t vl = 32 // sizeof(floating)
    cdef floating[:, ::1] wt
    cdef floating[:, ::1] gt
    cdef unsigned char[::1] scratch
    cdef double density
    cdef int f32 = floating is float
    if X.shape[0] == 0 or (sparse_fwd_max_density[f32] < 0 and
                           (not want_grad or sparse_grad_max_density[f32] < 0)):
        return NULL
    density = sample_density(X)
    sp.fwd = density <= sparse_fwd_max_density[f32]
    sp.grad = want_grad and density <= sparse_grad_max_density[f32]
    if not (sp.fwd or sp.grad):
        return NULL
    dtype = np.float32 if floating is float else np.float64
    sp.ldw = (n_out + vl - 1) // vl * vl
    wt = np.zeros((n_in, sp.ldw), dtype=dtype)
    for o in range(n_out):
        for j in range(n_in):
            wt[j, o] = params[o * n_in + j]
    sp.scratch_bytes = (sparse_scratch_bytes(sp.ldw, sizeof(floating)) + 63) // 64 * 64
    scratch = np.empty(sp.scratch_bytes * MAX_TASKS, dtype=np.uint8)
    keep.extend((wt, scratch))
    sp.wt = <const void*>&wt[0, 0]
    sp.scratch = <char*>&scratch[0]
    sp.gt = NULL
    if sp.grad:
        gt = np.zeros((n_in, sp.ldw), dtype=dtype)
        keep.append(gt)
        sp.gt = <void*>&gt[0, 0]
    return sp


cdef void store_sparse_grad(const Net* net, const SparseInput* sp, floating* grad) noexcept nogil:
    """grad's W_0 block = (G_0^T)^T from sp.gt."""
    cdef Py_ssize_t n_in = net.sizes[0], n_out = net.sizes[1], o, j
    cdef const floating* gt = <const floating*>sp.gt
    for o in range(n_out):
        for j in range(n_in):
            grad[o * n_in + j] = gt[j * sp.ldw + o]


# feedforward and evaluate take chunks of rows the small forward kernels take where they apply
cdef bint eval_small_chunks = True


def set_eval_small_chunks(bint on):
    """Let feedforward and evaluate cut their rows into chunks for the small forward kernels
    (the default); returns the old value. For tests and benchmarks."""
    global eval_small_chunks
    old = eval_small_chunks
    eval_small_chunks = on
    return old


cdef Py_ssize_t pass_chunk(const Net* net, Py_ssize_t chunk, size_t itemsize, bint want_grad,
                           const SparseInput* sp) noexcept nogil:
    """The rows per chunk of a pass over a data set (feedforward, evaluate) given the
    workspace's ``chunk``: at most small_max_rows where, on more than one thread, the small
    forward kernels then take layer 0 (without a gradient or a sparse input), whose tasks
    split the chunk; BLAS, called per task on a few thousand rows, took 1.3-1.8x their time
    on 2 threads (50 000 rows of 784 inputs, layer 0 of C1, C2, C3: 55, 25, 67 ms against 83,
    44, 85). On one thread of fastnn's, BLAS runs its own threads and the chunks stay large."""
    if (not want_grad and sp == NULL and eval_small_chunks and fastnn_pool_get_threads() > 1
            and small_max_rows > 0
            and small_layer(net, 0, min(chunk, small_max_rows), itemsize)):
        return min(chunk, small_max_rows)
    return chunk


def feedforward(const int[::1] sizes, const int[::1] acts, int cost,
                const floating[::1] params, const floating[:, ::1] X,
                floating[:, ::1] out, floating[::1] work, Py_ssize_t chunk):
    """out = network output for every row of X, ``chunk`` rows at a time.

    ``work`` holds at least ``workspace_size(sizes, chunk)`` elements.
    """
    cdef Net net
    make_net(&net, sizes, acts, cost)
    cdef Py_ssize_t n = X.shape[0], n0 = net.sizes[0], nL = net.sizes[net.L]
    cdef Py_ssize_t s, m
    cdef SparseInput spi
    cdef list keep = []
    cdef const SparseInput* sp = plan_sparse(&spi, &net, params, X, False, keep)
    chunk = pass_chunk(&net, chunk, sizeof(floating), False, sp)
    cdef Py_ssize_t[::1] slots = row_slots(&net, min(chunk, n))
    cdef const floating** rows = <const floating**>&slots[0]
    with nogil:
        s = 0
        while s < n:
            m = min(chunk, n - s)
            point_rows(rows, &X[0, 0], s, m, n0)
            forward(&net, &params[0], &X[s, 0], rows, &work[0], m, False, sp)
            memcpy(&out[s, 0], act_ptr(&net, &work[0], m, net.L),
                   m * nL * sizeof(floating))
            s += m
    return np.asarray(out)


def evaluate(const int[::1] sizes, const int[::1] acts, int cost,
             floating[::1] params, const floating[:, ::1] X,
             const floating[:, ::1] Y, const Py_ssize_t[::1] labels,
             floating[::1] grad, floating[::1] work, Py_ssize_t chunk,
             bint want_grad, bint want_accuracy):
    """Total C0 over all rows (a sum, not a mean), correct-class count, and
    optionally ``grad = (1/n) sum_x dC0_x/dparams`` (overwritten).

    Targets come from ``Y`` (n, n_out) or, when Y has no rows, ``labels``.
    Returns ``(cost_sum, n_correct)``. Without the gradient, on more than one thread, the
    rows go in chunks of at most small_max_rows (see pass_chunk): the cost then
    agrees with the one formed beside a gradient to rounding, not to the bit.
    """
    cdef Net net
    make_net(&net, sizes, acts, cost)
    cdef Py_ssize_t n = X.shape[0], nL = net.sizes[net.L]
    cdef Py_ssize_t s, m, i
    cdef double total = 0
    cdef Py_ssize_t correct = 0
    cdef const floating* Yp = opt_ptr2(Y)
    cdef const Py_ssize_t* lp = opt_labels(labels)
    cdef floating* wk = &work[0]
    cdef floating scale = (1.0 / n) if n > 0 else 0.0
    cdef SparseInput spi
    cdef list keep = []
    cdef const SparseInput* sp = plan_sparse(&spi, &net, params, X, want_grad, keep)
    chunk = pass_chunk(&net, chunk, sizeof(floating), want_grad, sp)
    cdef Py_ssize_t[::1] slots = row_slots(&net, min(chunk, n))
    cdef const floating** rows = <const floating**>&slots[0]
    cdef double[::1] costs = np.empty(max(1, min(chunk, n)), dtype=np.float64)
    cdef Job cj
    init_job(&cj, JOB_COST, &net, 0, <void*>&params[0], NULL, NULL, NULL, <void*>wk, NULL,
             NULL, False, NULL)
    cj.f32 = floating is float
    cj.l = net.L - 1
    cj.costs = &costs[0]
    cj.Y = <const void*>Yp
    cj.labels = lp
    cj.want_hits = want_accuracy
    with nogil:
        s = 0
        while s < n:
            m = min(chunk, n - s)
            point_rows(rows, &X[0, 0], s, m, net.sizes[0])
            forward(&net, &params[0], &X[s, 0], rows, wk, m, True, sp)
            # each row's cost in a region over the rows, added here in order (the sum does
            # not depend on the threads)
            cj.m = m
            cj.row0 = s
            run_job(&cj)
            for i in range(m):
                total += costs[i]
            for i in range(cj.ntasks):
                correct += cj.hits[i]
            if want_grad:
                output_delta(&net, wk, m,
                             Yp + s * nL if Yp != NULL else NULL,
                             lp + s if lp != NULL else NULL, NULL, scale)
                backward(&net, &params[0], &grad[0], &X[s, 0], wk, m, s > 0, rows, sp)
            s += m
        if want_grad and sp != NULL and sp.grad and n > 0:
            store_sparse_grad(&net, sp, &grad[0])
    return total, correct


cdef Rule make_rule(int mode, double eta, double mu, double l2, double beta1,
                    double beta2, double eps, Py_ssize_t t) noexcept nogil:
    """The constants of one step; for Adam, t is the number of this step (>= 1)."""
    cdef Rule r
    r.mode = mode
    r.eta = eta
    r.mu = mu
    r.l2 = l2
    r.beta1 = beta1
    r.beta2 = beta2
    r.eps = eps
    r.lr_t = eta
    if mode == RULE_ADAM:
        r.lr_t = eta * sqrt(1 - pow(beta2, <double>t)) / (1 - pow(beta1, <double>t))
    return r


def sgd_step(const int[::1] sizes, const int[::1] acts, int cost,
             floating[::1] params, const floating[::1] grad, floating[::1] vel,
             double eta, double mu, double l2, bint nesterov):
    """The SGD update on the whole buffer (test twin of the training path).

    Returns True when every new parameter is finite."""
    cdef Net net
    make_net(&net, sizes, acts, cost)
    cdef int bad
    cdef Rule r = make_rule(RULE_PLAIN if mu == 0 else (RULE_NESTEROV if nesterov else RULE_MOMENTUM),
                            eta, mu, l2, 0, 0, 0, 0)
    with nogil:
        bad = apply_update(&net, &params[0], &grad[0], &vel[0], &vel[0], &r)
    return bad == 0


def adam_step(const int[::1] sizes, const int[::1] acts, int cost,
              floating[::1] params, const floating[::1] grad, floating[::1] m1,
              floating[::1] m2, double eta, double beta1, double beta2, double eps,
              double l2, Py_ssize_t t):
    """The Adam update (step number t >= 1) on the whole buffer (test twin).

    Returns True when every new parameter is finite."""
    cdef Net net
    make_net(&net, sizes, acts, cost)
    cdef int bad
    cdef Rule r = make_rule(RULE_ADAM, eta, 0, l2, beta1, beta2, eps, t)
    with nogil:
        bad = apply_update(&net, &params[0], &grad[0], &m1[0], &m2[0], &r)
    return bad == 0


cdef bint prefetch = True
# ... and layer 0's fused update asks for all of the next batch's rows, a few cache lines
# per block of W it updates, so that they arrive while it computes and the forward product
# finds them in L2 (asked for all at once, the requests stalled the core), when they fit
# there: at most update_prefetch_bytes, and at most one core's L2 beside its share of W and
# of the optimizer's state. Interleaved epochs (16 pairs): C1 (63 KB of rows) 4.4 %, C3
# (200 KB) 2.5 % less time; S2 (63 KB beside 627 KB of W and velocity per core) 2.6 %, C2
# (400 KB) and S1 (1.25 MB) 4-5 % more, their rows crowding W out of L2.
cdef Py_ssize_t update_prefetch_bytes = 256 * 1024
cdef Py_ssize_t l2_bytes = fastnn_l2_bytes()


cdef bint update_prefetch_fits(const Net* net, Py_ssize_t m, size_t itemsize,
                               int mode) noexcept nogil:
    """Whether layer 0's fused update prefetches a next batch of m rows (see above): the
    rows each thread asks for (all of them, or its block where the forward product splits
    the batch's rows: see next_rows_plan)."""
    cdef Py_ssize_t threads = max(1, <Py_ssize_t>fastnn_pool_get_threads())
    cdef Py_ssize_t rows = m * net.sizes[0] * <Py_ssize_t>itemsize
    cdef Py_ssize_t w = <Py_ssize_t>net.sizes[0] * net.sizes[1] * <Py_ssize_t>itemsize
    cdef Py_ssize_t states = 0 if mode == RULE_PLAIN else (2 if mode == RULE_ADAM else 1)
    if next_forward_splits_rows(net, m, itemsize == 4):
        rows = (rows + threads - 1) // threads
    return rows <= update_prefetch_bytes and rows + (1 + states) * w // threads <= l2_bytes


def set_update_prefetch_bytes(Py_ssize_t nbytes):
    """Largest next batch (bytes of its rows) that layer 0's fused update prefetches as it
    goes (0: never); returns the old value. For tests and benchmarks."""
    global update_prefetch_bytes
    old = update_prefetch_bytes
    update_prefetch_bytes = max(0, nbytes)
    return old

# Optional per-phase wall-clock accounting of train_steps (for profiling; off by default).
cdef extern from *:
    """
    #include <time.h>
    static double fastnn_now_s(void) {
    #if defined(CLOCK_MONOTONIC)
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    #else
        return 0.0;
    #endif
    }
    """
    double fastnn_now_s() noexcept nogil

cdef enum:
    PHASE_GATHER = 0
    PHASE_FORWARD = 1
    PHASE_LOSS = 2
    PHASE_DELTA = 3
    PHASE_BACKWARD = 4
    N_PHASES = 5

cdef bint phase_timing = False
cdef double phase_s[N_PHASES]
PHASES = ("gather+prefetch", "forward", "loss", "output delta", "backward+update")


def set_phase_timing(bint on):
    """Account train_steps' wall time per phase (see phase_times); returns the old setting."""
    global phase_timing
    old = phase_timing
    phase_timing = on
    return old


def phase_times(bint reset=True):
    """{phase: seconds} accumulated by train_steps while phase timing is on."""
    out = {name: phase_s[i] for i, name in enumerate(PHASES)}
    if reset:
        for i in range(N_PHASES):
            phase_s[i] = 0
    return out


# The prefetch asks for the first prefetch_bytes of each row only: that starts every row's
# DRAM access a step early and the hardware prefetcher follows the rest of the row as the
# kernel reads it. Asking for whole rows stalled the region on the core's few outstanding
# misses (interleaved epochs: C2 10 %, S1 6 % slower than two lines per row; C1 the same).
cdef Py_ssize_t prefetch_bytes = 128


def set_prefetch_bytes(Py_ssize_t nbytes):
    """Bytes at the start of each row the prefetch asks for; returns the old value. For
    tests and benchmarks."""
    global prefetch_bytes
    old = prefetch_bytes
    prefetch_bytes = max(0, nbytes)
    return old


def set_prefetch(bint on):
    """Turn the prefetch of the next batch's rows on or off; returns the old value."""
    global prefetch
    old = prefetch
    prefetch = on
    return old


cdef void prefetch_rows(const floating* X, const Py_ssize_t* rows, Py_ssize_t m,
                        Py_ssize_t n0) noexcept nogil:
    cdef Py_ssize_t i, off
    cdef const char* r
    cdef Py_ssize_t nbytes = min(n0 * sizeof(floating), prefetch_bytes)
    for i in range(m):
        r = <const char*>(X + rows[i] * n0)
        for off in range(0, nbytes, 64):
            FASTNN_PREFETCH(r + off)


cdef inline double tick(int phase, double since) noexcept nogil:
    """Add the time since ``since`` to ``phase``; returns now."""
    cdef double now = fastnn_now_s()
    phase_s[phase] += now - since
    return now


cdef struct NormJob:
    const Net* net
    const void* params
    bint f32
    int ntasks
    double part[MAX_TASKS]


cdef void norm_task(void* ctx, int t) noexcept nogil:
    """Task t: sum of squares of block t of every layer's weights."""
    cdef NormJob* nj = <NormJob*>ctx
    cdef const Net* net = nj.net
    cdef double acc = 0
    cdef int l
    cdef Py_ssize_t nw, a, b
    for l in range(net.L):
        nw = <Py_ssize_t>net.sizes[l + 1] * net.sizes[l]
        a = nw * t // nj.ntasks
        b = nw * (t + 1) // nj.ntasks
        if nj.f32:
            acc += fastnn_sumsq_s(<const float*>nj.params + net.woff[l] + a, b - a)
        else:
            acc += fastnn_sumsq_d(<const double*>nj.params + net.woff[l] + a, b - a)
    nj.part[t] = acc


cdef double weight_norm2(const Net* net, const floating* params) noexcept nogil:
    """sum_l ||W_l||^2 (biases excluded), accumulated in double (sumsq of _small.h), in
    blocks summed by the kernels' threads (the blocks depend only on the thread count)."""
    cdef NormJob nj
    cdef Py_ssize_t total = 0
    cdef double acc = 0
    cdef int l, t
    for l in range(net.L):
        total += <Py_ssize_t>net.sizes[l + 1] * net.sizes[l]
    nj.net = net
    nj.params = <const void*>params
    nj.f32 = floating is float
    nj.ntasks = 1 if total < par_min_macs else <int>min(<Py_ssize_t>fastnn_pool_get_threads(),
                                                          <Py_ssize_t>MAX_TASKS)
    if nj.ntasks > 1:
        fastnn_pool_run(nj.ntasks, norm_task, <void*>&nj)
    else:
        norm_task(<void*>&nj, 0)
    for t in range(nj.ntasks):
        acc += nj.part[t]
    return acc


def weights_norm2(const int[::1] sizes, const int[::1] acts, int cost,
                  const floating[::1] params):
    """sum_l ||W_l||^2 over the weights in ``params`` (biases excluded), in double.

    Computed by fastnn's own threads (``weight_norm2``), never by BLAS: a BLAS dot
    product of a few tens of thousands of elements wakes OpenBLAS's threads, which
    then spin for about 0.1 s on the cores the next training steps need."""
    cdef Net net
    make_net(&net, sizes, acts, cost)
    cdef double out
    with nogil:
        out = weight_norm2(&net, &params[0])
    return out


# Layer 0's fused update also forms the next batch's A_1 (see backward_update) where
# next_forward_fits allows it and its tasks have at least next_forward_min_rows rows of W
# each. Interleaved epochs, [784, 100, 10] float64, batch 10 (50 rows per task): 26 % less
# time; [784, 30, 10] (8 rows per task): 10 % more (the separate forward is faster there).
cdef bint fused_next_forward = True
cdef Py_ssize_t next_forward_min_rows = 16
# steps whose A_1 came out of the previous step's update (see next_forward_steps); two
# networks may train at once in two Python threads, hence the atomic add
cdef extern from *:
    """
    static void fastnn_count_add(Py_ssize_t *p, Py_ssize_t v) {
    #if defined(__GNUC__) || defined(__clang__)
        __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
    #else
        *p += v;
    #endif
    }
    """
    void fastnn_count_add(Py_ssize_t* p, Py_ssize_t v) noexcept nogil
cdef Py_ssize_t next_forward_count = 0


def next_forward_steps(bint reset=True):
    """How many training steps since the last reset started from an A_1 that the previous
    step's fused update formed. For tests and benchmarks."""
    global next_forward_count
    out = next_forward_count
    if reset:
        next_forward_count = 0
    return out


def set_fused_next_forward(bint on, Py_ssize_t min_rows=16):
    """Let layer 0's fused update form the next batch's first activations (where
    next_forward_fits allows, in tasks of at least ``min_rows`` rows of W); returns the
    old pair. For tests and benchmarks."""
    global fused_next_forward, next_forward_min_rows
    old = (fused_next_forward, next_forward_min_rows)
    fused_next_forward = on
    next_forward_min_rows = max(0, min_rows)
    return old


# A training step runs the output layer's forward product and activation, the output delta
# and the delta of the layer below it as one region over blocks of the batch's rows (each
# row's results only need that row, and get the same bits in any block), where both products
# run in the small kernels, instead of three steps that, below par_min_macs, each ran on one
# thread (C2: 5 + 1.5 + 5 us of a 140 us step).
cdef bint fused_tail = True


def set_fused_tail(bint on):
    """Run a step's output-layer forward, output delta and the delta below as one region
    over the batch's rows (the default) or as the separate steps; returns the old value.
    For tests and benchmarks."""
    global fused_tail
    old = fused_tail
    fused_tail = on
    return old


cdef inline bint tail_fits(const Net* net, Py_ssize_t m, size_t itemsize) noexcept nogil:
    """Whether a training step of m rows takes the tail region (see fused_tail)."""
    return (fused_tail and net.L >= 2 and small_layer(net, net.L - 1, m, itemsize)
            and small_delta(net, net.L - 1, m))


cdef bint next_forward_fits(const Net* net, Py_ssize_t m, size_t itemsize,
                            int mode) noexcept nogil:
    """Whether layer 0's fused update of m rows can form the next batch's A_1 (m rows too)
    with the very bits forward's own region would give: layer 0 is hidden (not softmax),
    both its forward product and its update run in the small kernels and split W's rows
    between their tasks (the two regions then have equal splits, units and work, so the
    same tasks: bias_activate sees the same column blocks), the forward product would take
    the k-tiled kernel (whose sums the fused kernel repeats), and the fan-in is a whole
    number of vectors."""
    cdef Py_ssize_t n0 = net.sizes[0], vl = 32 // <Py_ssize_t>itemsize
    return (fused_next_forward and net.L >= 2 and n0 >= vl and n0 % vl == 0
            and m <= nt_tiled_rows(itemsize == 4)
            and small_layer(net, 0, m, itemsize) and fused_layer(net, 0, m, mode)
            and forward_splits_w(net, 0, m, True, itemsize == 4)
            and not gradient_splits_cols(net, 0, m, True))


def train_steps(const int[::1] sizes, const int[::1] acts, int cost,
                floating[::1] params, floating[::1] grad, floating[::1] vel,
                floating[::1] sq, const floating[:, ::1] X, const floating[:, ::1] Y,
                const Py_ssize_t[::1] labels, const Py_ssize_t[::1] perm,
                Py_ssize_t batch_size, Py_ssize_t start, Py_ssize_t stop,
                floating[::1] work, int mode, double eta, double mu, double l2,
                bint l2_per_batch, double beta1, double beta2, double eps,
                Py_ssize_t t, bint want_loss, double[::1] balance=None):
    """Mini-batch steps over the samples ``perm[start:stop]``.

    Each step takes the next ``batch_size`` rows (fewer for the last one),
    runs forward and backward with the mean gradient ``g`` of the batch and
    applies the update rule ``mode`` (0 plain, 1 momentum, 2 Nesterov, 3 Adam;
    see ``update_segment``) with the L2 coefficient ``l2`` (divided by the
    batch's row count when ``l2_per_batch``). ``vel`` is the velocity (Adam's
    first moment), ``sq`` Adam's second moment (unused otherwise); ``t`` is
    the number of Adam steps taken before. Stops after the first step whose
    new parameters are not finite.

    Returns ``(steps_done, finite, loss_sum, t)``. With ``want_loss``,
    ``loss_sum`` is the sum over the steps of ``m * (C0 of the batch +
    l2_b/2 sum ||W||^2)`` evaluated before each update (so ``loss_sum / n``
    over an epoch is the running training loss scikit-learn reports).

    ``balance`` (``balance_size(L)`` doubles, all 1.0 at first, kept from call to call)
    holds the threads' speeds that size the blocks of the regions whose results do not
    depend on them (see balance_blocks); None gives every region equal blocks.
    """
    cdef Net net
    make_net(&net, sizes, acts, cost)
    cdef Py_ssize_t n0 = net.sizes[0], nL = net.sizes[net.L]
    cdef Py_ssize_t s, m, i, next_m, steps = 0
    cdef bint pf_fits = update_prefetch_fits(&net, batch_size, sizeof(floating), mode)
    # layer 0's fused update forms the next batch's A_1 when both batches are whole
    cdef bint nf_fits = next_forward_fits(&net, batch_size, sizeof(floating), mode)
    cdef Py_ssize_t[::1] nf_slots = np.empty(max(batch_size, 1) if nf_fits else 1, dtype=np.intp)
    cdef const floating** nf_rows = <const floating**>&nf_slots[0]
    cdef Py_ssize_t nf_m = 0
    cdef bint have_a1 = False
    cdef const floating* Yp = opt_ptr2(Y)
    cdef const Py_ssize_t* lp = opt_labels(labels)
    cdef floating* wk = &work[0]
    cdef const floating* Xp = &X[0, 0]
    # The labels of the steps' rows in the order the steps take them, gathered once: the
    # output delta then reads them in sequence, not one cache miss per row (C2: its phase
    # took 4-5 ms per epoch with the rows shuffled, 1.2 ms in order).
    cdef bint gather_labels = lp != NULL and Yp == NULL
    cdef Py_ssize_t[::1] lperm_buf = np.empty(max(stop - start, 1) if gather_labels else 1,
                                              dtype=np.intp)
    cdef Py_ssize_t* lperm = &lperm_buf[0] if gather_labels else NULL
    cdef const Py_ssize_t* pp = &perm[0]
    cdef int bad = 0
    cdef Py_ssize_t[::1] slots = row_slots(&net, min(batch_size, max(stop - start, 1)))
    cdef const floating** rows = <const floating**>&slots[0]
    # (the fused kernel takes batches of at most fused_max_rows rows: a few KiB per task)
    cdef Py_ssize_t tn_bytes = tn_scratch_bytes(&net, min(batch_size, max(stop - start, 1)),
                                                sizeof(floating), mode)
    cdef unsigned char[::1] tn_buf = np.empty(tn_bytes * MAX_TASKS + 64, dtype=np.uint8)
    cdef char* tn_scratch = <char*>(((<size_t>&tn_buf[0]) + 63) // 64 * 64)
    cdef double loss = 0, l2_b, wn = 0
    cdef bint wn_known = False
    cdef Job gather, ahead, tail
    cdef bint use_tail
    cdef double[::1] row_costs = np.empty(max(1, batch_size) if want_loss else 1, dtype=np.float64)
    cdef double tp = 0
    cdef double* bal = NULL
    if balance is not None:
        if balance.shape[0] < balance_size(net.L):
            raise ValueError(f"train_steps: balance needs {balance_size(net.L)} entries; "
                             f"got {balance.shape[0]}")
        bal = &balance[0]
    cdef floating* Aout
    cdef floating* Zout
    cdef Rule r
    # the two row-moving regions; each step sets their row count and rows
    init_job(&gather, JOB_GATHER, &net, 0, NULL, NULL, NULL, NULL, <void*>wk, NULL,
             <const void**>rows, False, NULL)
    gather.f32 = floating is float
    gather.X = <const void*>Xp
    init_job(&tail, JOB_TAIL, &net, 0, <void*>&params[0], NULL, NULL, NULL, <void*>wk, NULL,
             <const void**>rows, True, NULL)
    tail.f32 = floating is float
    tail.l = net.L - 1
    init_job(&ahead, JOB_PREFETCH, &net, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, False, NULL)
    ahead.f32 = floating is float
    ahead.X = <const void*>Xp
    ahead.Y = <const void*>Yp
    ahead.labels = NULL if gather_labels else lp
    with nogil:
        if lperm != NULL:
            for i in range(stop - start):
                lperm[i] = lp[pp[start + i]]
        s = start
        while s < stop:
            if phase_timing:
                tp = fastnn_now_s()
            m = min(batch_size, stop - s)
            if not (small_layer(&net, 0, m, sizeof(floating)) and fused_layer(&net, 0, m, mode)):
                # a BLAS product of the first layer needs the batch contiguous
                gather.m = m
                gather.idx = pp + s
                run_job(&gather)
            else:
                # the small kernels read the batch's rows where they are
                for i in range(m):
                    rows[i] = Xp + pp[s + i] * n0
            if prefetch and stop - s - m > 0:
                # ask for the next batch's rows now (on every thread that reads them);
                # they arrive during this step
                ahead.m = min(batch_size, stop - s - m)
                ahead.idx = pp + s + m
                run_job(&ahead)
            if phase_timing:
                tp = tick(PHASE_GATHER, tp)
            use_tail = tail_fits(&net, m, sizeof(floating))
            forward(&net, &params[0], wk, rows, wk, m, want_loss, NULL, have_a1, bal, use_tail)
            if use_tail:
                # A_L and D_L, and D_{L-1} before any update
                tail.m = m
                tail.keep_z = want_loss
                tail.scale = 1.0 / m
                tail.Y = NULL if lperm != NULL else <const void*>Yp
                tail.labels = lperm + (s - start) if lperm != NULL else NULL
                tail.idx = NULL if lperm != NULL else pp + s
                tail.costs = &row_costs[0] if want_loss else NULL
                run_job(&tail)
            if phase_timing:
                tp = tick(PHASE_FORWARD, tp)
            l2_b = l2 / m if l2_per_batch else l2
            next_m = min(batch_size, stop - s - m) if prefetch else 0
            if want_loss:
                Aout = act_ptr(&net, wk, m, net.L)
                Zout = zout_ptr(&net, wk, m)
                for i in range(m):
                    if use_tail:
                        # (the tail region formed the rows' costs)
                        loss += row_costs[i]
                    elif lperm != NULL:
                        loss += row_cost(&net, Zout + i * nL, Aout + i * nL, NULL,
                                         lperm + (s - start), i)
                    else:
                        loss += row_cost(&net, Zout + i * nL, Aout + i * nL, Yp, NULL, pp[s + i])
                if l2_b != 0:
                    if not wn_known:
                        wn = weight_norm2(&net, &params[0])
                    loss += 0.5 * l2_b * m * wn
            if phase_timing:
                tp = tick(PHASE_LOSS, tp)
            if use_tail:
                pass
            elif lperm != NULL:
                output_delta(&net, wk, m, NULL, lperm + (s - start), NULL, <floating>(1.0 / m))
            else:
                output_delta(&net, wk, m, Yp, NULL, pp + s, <floating>(1.0 / m))
            if phase_timing:
                tp = tick(PHASE_DELTA, tp)
            if mode == RULE_ADAM:
                t += 1
            r = make_rule(mode, eta, mu, l2_b, beta1, beta2, eps, t)
            nf_m = 0
            have_a1 = False
            if nf_fits and m == batch_size and stop - s - m >= batch_size:
                nf_m = batch_size
                for i in range(nf_m):
                    nf_rows[i] = Xp + pp[s + m + i] * n0
            # the next step's ||W||^2 (for its loss) comes out of this step's update pass
            bad = backward_update(&net, &params[0], &grad[0], &vel[0], &sq[0], wk, rows,
                                  wk, m, &r, tn_scratch, tn_bytes,
                                  &wn if want_loss and l2 != 0 else NULL, Xp, pp + s + m,
                                  next_m if pf_fits else 0, nf_rows, nf_m, wk, &have_a1, bal,
                                  True, use_tail)
            if have_a1:
                fastnn_count_add(&next_forward_count, 1)
            wn_known = want_loss and l2 != 0
            if phase_timing:
                tp = tick(PHASE_BACKWARD, tp)
            steps += 1
            s += m
            if bad:
                break
    return steps, bad == 0, loss, t
