"""A/B timing of fastnn's C kernels: two versions of ``src/fastnn``'s headers, one process.

On a shared machine the speed of a core drifts by 10-30 % from minute to minute (another
tenant on the same physical core), so two builds timed one after the other, even in
alternating processes, differ by more than most kernel changes. This tool compiles the
small-batch kernels twice into one C program - version A from a git revision, version B
from the working tree (or another revision) - and times them in interleaved chunks
(A B B A A B ...), so that both see the same drift; it reports each version's median time
per call and the median and quartiles of the B/A ratios of neighbouring chunks. Timing the
same version twice (``--base WORKTREE``) shows the floor of the method: on the 2-core VM
used for the README's figures the median ratio of an A/A run stayed within 2 %. The two
versions' results are also compared, bit for bit, after the same calls from the same
start.

    python benchmarks/kernel_ab.py --base HEAD update:d:10:8 update:s:128:30:392 forward:d:10:15

Shapes (the batch's rows are drawn at random from a pool of ``--pool`` rows of
``--fan-in`` columns, new rows every call):

    update:T:m:n[:k[:rule]]   the fused update (small_tn_update) of n rows of W over the
                              columns [0, k) (default: the whole fan-in), m batch rows;
                              rule plain, momentum (default), nesterov or adam
    sparse:T:m:n[:k]          the same with 80 % of the delta zero (Nesterov, the ReLU
                              layers' variant allowed: sparse_max 0.4)
    forward:T:m:n             the forward product Z = A W^T (small_nt) of m rows, n of W

T is d (float64) or s (float32). It needs gcc and Python's headers (a development tool,
not part of the package); the kernels' C signatures are those of this revision's
``_small_impl.h``.
"""
import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile

HEADERS = ("_small.h", "_small_impl.h")  # the kernels it times include nothing else

WRAPPERS = r"""
#include "_small.h"
#define UPD(T, SFX)                                                                       \
int upd##SFX##_V(const T *D, Py_ssize_t ldd, const T *const *Ar, T *W, T *V, T *S,        \
                 Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int mode,        \
                 void *scr, double sparse_max)                                              \
{                                                                                          \
    adam_consts##SFX ac = {(T)0.9, (T)0.999, (T)0.1, (T)0.001, (T)1e-8, (T)1e-3};          \
    return small_tn_update##SFX(D, ldd, Ar, 0, W, V, S, ldw, m, n, k, mode,                \
                                (T)(mode == 3 ? 0.001 : 0.005), (T)0.9, (T)1e-5, &ac, scr,  \
                                NULL, NULL, NULL, sparse_max);                              \
}                                                                                          \
void fwd##SFX##_V(const T *const *Ar, const T *W, T *Z, Py_ssize_t m, Py_ssize_t n,         \
                  Py_ssize_t k)                                                             \
{                                                                                          \
    small_nt##SFX(Ar, W, Z, m, n, k, n);                                                    \
}
UPD(double, _d)
UPD(float, _s)
"""

DRIVER = r"""
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define DECL(T, SFX, V)                                                                   \
int upd##SFX##_##V(const T *, Py_ssize_t, const T *const *, T *, T *, T *, Py_ssize_t,     \
                   Py_ssize_t, Py_ssize_t, Py_ssize_t, int, void *, double);              \
void fwd##SFX##_##V(const T *const *, const T *, T *, Py_ssize_t, Py_ssize_t, Py_ssize_t);
DECL(double, _d, A) DECL(double, _d, B) DECL(float, _s, A) DECL(float, _s, B)
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static unsigned long long rng = 88172645463325252ull;
static unsigned long long rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}
static double unif(void) { return (rnd() >> 11) * (1.0 / 9007199254740992.0); }
/* kind: 0 update, 1 sparse update, 2 forward; one call of version b on buffers w, v, s */
static void *X, *D, *Z, *scr;
static const void *rows[1024];
static int kind, f32, m, n, k, mode, K, pool;
static void call(int b, void *w, void *v, void *s)
{
    double sp = kind == 1 ? 0.4 : 0;
    if (kind == 2) {
        if (f32) (b ? fwd_s_B : fwd_s_A)((const float *const *)rows, w, Z, m, n, K);
        else (b ? fwd_d_B : fwd_d_A)((const double *const *)rows, w, Z, m, n, K);
    } else if (f32) {
        (b ? upd_s_B : upd_s_A)(D, n, (const float *const *)rows, w, v, s, K, m, n, k, mode, scr, sp);
    } else {
        (b ? upd_d_B : upd_d_A)(D, n, (const double *const *)rows, w, v, s, K, m, n, k, mode, scr, sp);
    }
}
static void draw_rows(void)
{
    size_t es = f32 ? 4 : 8;
    for (int i = 0; i < m; i++)
        rows[i] = (char *)X + (size_t)(pool <= m ? i : (int)(rnd() % (unsigned)pool)) * K * es;
}
static void *fill(size_t cnt, double lo, double hi, double zeros)
{
    void *p = aligned_alloc(64, (cnt * 8 + 63) / 64 * 64);
    for (size_t i = 0; i < cnt; i++) {
        double x = unif() < zeros ? 0.0 : lo + (hi - lo) * unif();
        if (f32) ((float *)p)[i] = (float)x; else ((double *)p)[i] = x;
    }
    return p;
}
int main(int argc, char **argv)
{
    int chunk, chunks;
    kind = atoi(argv[1]); f32 = atoi(argv[2]); m = atoi(argv[3]); n = atoi(argv[4]);
    k = atoi(argv[5]); mode = atoi(argv[6]); K = atoi(argv[7]); pool = atoi(argv[8]);
    chunk = atoi(argv[9]); chunks = atoi(argv[10]);
    size_t es = f32 ? 4 : 8, wn = (size_t)n * K;
    X = fill((size_t)(pool > m ? pool : m) * K, 0, 1, 0);
    D = fill((size_t)m * n, -1e-3, 1e-3, kind == 1 ? 0.8 : 0);
    Z = fill((size_t)m * n + 64, 0, 0, 0);
    scr = aligned_alloc(64, 1 << 22);
    void *W0 = fill(wn, -0.05, 0.05, 0), *V0 = fill(wn, -1e-4, 1e-4, 0), *S0 = fill(wn, 0, 1e-6, 0);
    void *w[2], *v[2], *s[2];
    for (int b = 0; b < 2; b++) {
        w[b] = aligned_alloc(64, wn * es); v[b] = aligned_alloc(64, wn * es); s[b] = aligned_alloc(64, wn * es);
    }
    /* the same calls from the same start: equal bits? */
    unsigned long long seed = rng;
    int same = 1;
    for (int b = 0; b < 2; b++) {
        memcpy(w[b], W0, wn * es); memcpy(v[b], V0, wn * es); memcpy(s[b], S0, wn * es);
        rng = seed;
        for (int it = 0; it < 5; it++) { draw_rows(); call(b, w[b], v[b], s[b]); }
        if (kind == 2) {
            static char *z0 = NULL;
            if (b == 0) { z0 = malloc((size_t)m * n * es); memcpy(z0, Z, (size_t)m * n * es); }
            else same = memcmp(z0, Z, (size_t)m * n * es) == 0;
        }
    }
    if (kind != 2)
        same = !memcmp(w[0], w[1], wn * es) && !memcmp(v[0], v[1], wn * es) && !memcmp(s[0], s[1], wn * es);
    double *ta = malloc(sizeof(double) * chunks), *tb = malloc(sizeof(double) * chunks);
    double *r = malloc(sizeof(double) * chunks);
    int na = 0, nb = 0;
    for (int c = 0; c < 2 * chunks; c++) {
        int b = (c / 2 + c) % 2;   /* A B B A A B B A ... */
        double t = now();
        for (int it = 0; it < chunk; it++) { draw_rows(); call(b, w[b], v[b], s[b]); }
        t = (now() - t) / chunk * 1e6;
        if (b) tb[nb++] = t; else ta[na++] = t;
    }
    for (int i = 0; i < chunks; i++) r[i] = tb[i] / ta[i];
    qsort(ta, chunks, 8, cmp); qsort(tb, chunks, 8, cmp); qsort(r, chunks, 8, cmp);
    printf("%.3f %.3f %.4f %.4f %.4f %d\n", ta[chunks / 2], tb[chunks / 2], r[chunks / 2],
           r[chunks / 4], r[3 * chunks / 4], same);
    return 0;
}
"""

RULES = {"plain": 0, "momentum": 1, "nesterov": 2, "adam": 3}


def headers_from(rev, repo, dest):
    """Write the kernel headers of git revision rev (or the working tree) into dest."""
    os.makedirs(dest, exist_ok=True)
    for name in HEADERS:
        path = os.path.join(repo, "src", "fastnn", name)
        if rev == "WORKTREE":
            with open(path, "rb") as f:
                data = f.read()
        else:
            got = subprocess.run(["git", "-C", repo, "show", f"{rev}:src/fastnn/{name}"],
                                 capture_output=True)
            if got.returncode != 0:
                raise SystemExit(f"kernel_ab: cannot read src/fastnn/{name} at revision "
                                 f"{rev!r}: {got.stderr.decode().strip()}")
            data = got.stdout
        with open(os.path.join(dest, name), "wb") as f:
            f.write(data)


def parse_shape(text, fan_in):
    """(label, kind, f32, m, n, k, mode) of a shape argument."""
    parts = text.split(":")
    if (len(parts) < 4 or parts[0] not in ("update", "sparse", "forward")
            or parts[1] not in ("d", "s")):
        raise SystemExit(f"kernel_ab: shape must be update|sparse|forward:d|s:m:n[...]; got {text!r}")
    kind = {"update": 0, "sparse": 1, "forward": 2}[parts[0]]
    m, n = int(parts[2]), int(parts[3])
    k = int(parts[4]) if len(parts) > 4 and kind != 2 else fan_in
    rule = parts[5] if len(parts) > 5 else ("nesterov" if kind == 1 else "momentum")
    if rule not in RULES:
        raise SystemExit(f"kernel_ab: rule must be one of {sorted(RULES)}; got {rule!r}")
    if not (1 <= m <= 1024 and 1 <= n and 1 <= k <= fan_in):
        raise SystemExit(f"kernel_ab: need 1 <= m <= 1024, n >= 1, 1 <= k <= fan-in; got {text!r}")
    return text, kind, parts[1] == "s", m, n, k, RULES[rule]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shapes", nargs="+")
    ap.add_argument("--base", default="HEAD", help="version A: a git revision, or WORKTREE")
    ap.add_argument("--head", default="WORKTREE", help="version B (default: the working tree)")
    ap.add_argument("--fan-in", type=int, default=784)
    ap.add_argument("--pool", type=int, default=2000, help="rows the batch is drawn from")
    ap.add_argument("--chunk", type=int, default=200, help="calls per timed chunk")
    ap.add_argument("--chunks", type=int, default=40, help="timed chunks of each version")
    a = ap.parse_args(argv)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shapes = [parse_shape(s, a.fan_in) for s in a.shapes]
    with tempfile.TemporaryDirectory() as tmp:
        for v, rev in (("A", a.base), ("B", a.head)):
            hdr = os.path.join(tmp, v)
            headers_from(rev, repo, hdr)
            src = os.path.join(tmp, f"k{v}.c")
            with open(src, "w") as f:
                f.write(WRAPPERS.replace("_V(", f"_{v}("))
        with open(os.path.join(tmp, "main.c"), "w") as f:
            f.write(DRIVER)
        inc = sysconfig.get_paths()["include"]
        flags = ["-O3", "-ffp-contract=off", f"-I{inc}"]
        objs = []
        for v in ("A", "B", None):
            src = os.path.join(tmp, f"k{v}.c" if v else "main.c")
            obj = src[:-2] + ".o"
            extra = [f"-I{os.path.join(tmp, v)}"] if v else []
            subprocess.run(["gcc", *flags, *extra, "-c", src, "-o", obj], check=True)
            objs.append(obj)
        exe = os.path.join(tmp, "kernel_ab")
        subprocess.run(["gcc", *objs, "-o", exe, "-lm"], check=True)
        print(f"A = {a.base}, B = {a.head}; rows drawn from {a.pool} of fan-in {a.fan_in}; "
              f"{a.chunks} interleaved chunks of {a.chunk} calls each")
        print("| shape | A us/call | B us/call | B/A (median of chunk pairs) | quartiles | same bits |")
        print("|---|---:|---:|---:|---|---|")
        for label, kind, f32, m, n, k, mode in shapes:
            out = subprocess.run([exe, *map(str, (kind, int(f32), m, n, k, mode, a.fan_in, a.pool,
                                                  a.chunk, a.chunks))],
                                 check=True, capture_output=True, text=True).stdout.split()
            ta, tb, r, q1, q3, same = out
            print(f"| {label} | {float(ta):.2f} | {float(tb):.2f} | {float(r):.3f} | "
                  f"{float(q1):.3f}-{float(q3):.3f} | {'yes' if same == '1' else 'NO'} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
