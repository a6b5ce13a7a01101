"""Do Hessian methods converge in fewer steps than gradient descent - and in less time?

    python benchmarks/second_order_study.py [--seeds 3] [--targets 0.1,0.01] [--hidden 16]
                                            [--methods SGD,Momentum,...] [--threads 1]
                                            [--out study.md]

Trains the same small network - ``[64, H, 10]`` (sigmoid hidden layer, softmax output,
log-likelihood cost, float64, no L2) on the handwritten digits that ship with fastnn
(``fastnn.datasets.load_digits``: 1397 training rows, 400 validation rows, a fixed split) -
from the same initial weights (one set per seed) with every optimizer fastnn has: SGD,
momentum, Nesterov (mini-batches of 10), Newton (exact Hessian), Hessian-free (Gauss-Newton
products), nonlinear conjugate gradient, BFGS and L-BFGS (full batch). Each run stops as
soon as the training cost C (over all training rows, evaluated after every epoch or
iteration) is at most the lowest of ``--targets``, or after its budget of iterations; the
report has one table per target (the first epoch/iteration at which each was reached).

For each method it reports, as mean +- standard deviation over the seeds that reached the
target (and how many did):

- *iterations*: parameter updates until the target (SGD: mini-batch steps; the cost is
  checked once per epoch, so these are whole epochs' worth of steps);
- *gradient evaluations* in full-batch equivalents (SGD: epochs; the others: gradient
  evaluations over the training set) and cost-only evaluations (line searches);
- *curvature products*: Hessian- or Gauss-Newton-vector products (a full Hessian counts P);
- *wall time* to the target (``History.seconds``: monitoring excluded), and per iteration;
- the validation accuracy when the run stopped.

It prints a markdown report and writes it with ``--out``. The wall times come from one
process on a shared 2-core machine: the header gives the load average at start and end.
"""
import argparse
import math
import os
import platform
import statistics
import sys

import numpy as np

import fastnn
from fastnn.datasets import load_digits
from fastnn.second_order import BFGS, LBFGS, ConjugateGradient, HessianFree, Newton

# name -> (factory, budget of epochs/iterations, kind)
METHODS = {
    "SGD": (lambda seed: fastnn.SGD(eta=0.5), 400, "sgd"),
    "Momentum": (lambda seed: fastnn.SGD(eta=0.05, momentum=0.9), 400, "sgd"),
    "Nesterov": (lambda seed: fastnn.SGD(eta=0.05, momentum=0.9, nesterov=True), 400, "sgd"),
    "Newton": (lambda seed: Newton(eta=1.0, damping=1e-3, line_search=True), 40, "full"),
    "HessianFree": (lambda seed: HessianFree(seed=seed), 100, "full"),
    "CG": (lambda seed: ConjugateGradient(gtol=0.0), 2000, "full"),
    "BFGS": (lambda seed: BFGS(gtol=0.0), 2000, "full"),
    "LBFGS": (lambda seed: LBFGS(gtol=0.0, ftol=0.0), 2000, "full"),
}
DESCRIPTION = {
    "SGD": "SGD eta 0.5, batch 10",
    "Momentum": "momentum 0.9, eta 0.05, batch 10",
    "Nesterov": "Nesterov 0.9, eta 0.05, batch 10",
    "Newton": "exact Hessian, damping 1e-3, saddle-free fallback, Armijo backtracking",
    "HessianFree": "Martens 2010, damping 1 (adapted), full-batch gradient",
    "CG": "scipy CG (Polak-Ribiere)",
    "BFGS": "scipy BFGS (dense P x P)",
    "LBFGS": "scipy L-BFGS-B, m = 10",
}
BATCH = 10


def load_split():
    X, y = load_digits()
    perm = np.random.default_rng(0).permutation(X.shape[0])
    tr, va = perm[:1397], perm[1397:]
    return X[tr], y[tr], X[va], y[va]


def run_one(name, seed, data, hidden, targets):
    """One training run, until the lowest target or the budget; returns, per target, a dict
    of the measurements at the first epoch/iteration whose training cost reached it."""
    X, y, Xv, yv = data
    factory, budget, kind = METHODS[name]
    net = fastnn.Network([X.shape[1], hidden, 10], hidden="sigmoid", output="softmax",
                         cost="log-likelihood", dtype="float64", seed=seed)
    lowest = min(targets)
    hist = net.fit(X, y, epochs=budget, batch_size=BATCH, optimizer=factory(seed),
                   validation_data=(Xv, yv), seed=seed,
                   callbacks=[lambda h: h.train_cost[-1] <= lowest])
    n = X.shape[0]
    out = {}
    for target in targets:
        hits = [i for i, c in enumerate(hist.train_cost) if c <= target]
        row = hits[0] if hits else len(hist) - 1
        seconds = float(sum(hist.seconds[:row + 1]))
        if kind == "sgd":
            iters = (row + 1) * math.ceil(n / BATCH)
            grads, fevs, hvps = float(row + 1), 0, 0
        else:
            iters = row + 1
            grads = float(hist.n_grad[row])
            fevs = int(hist.n_fev[row] - hist.n_grad[row])
            hvps = int(hist.n_hvp[row])
        out[target] = {"reached": bool(hits), "iters": iters, "grads": grads, "fevs": fevs,
                       "hvps": hvps, "seconds": seconds, "per_iter": seconds / iters,
                       "cost": hist.train_cost[row], "val": hist.val_accuracy[row],
                       "P": net.n_params}
    return out


def _stat(values, fmt="{:.3g}"):
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} +- {fmt.format(statistics.stdev(values))}"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="number of initial weight sets (default 3)")
    ap.add_argument("--targets", default="0.1,0.01",
                    help="training costs to reach, comma-separated (default 0.1,0.01)")
    ap.add_argument("--hidden", type=int, default=16, help="hidden neurons (default 16)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of "
                    + ", ".join(METHODS))
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads (default 1: at these sizes a second thread gains little and "
                         "makes the timings hostage to any other process on a 2-core machine; "
                         "0 leaves the default)")
    ap.add_argument("--out", help="write the markdown report here")
    args = ap.parse_args(argv)
    if args.threads > 0:
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.threads, "blas")
        except ImportError:
            print("threadpoolctl is not installed: BLAS threads left at their default",
                  file=sys.stderr)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    try:
        targets = sorted({float(t) for t in args.targets.split(",") if t.strip()}, reverse=True)
    except ValueError:
        ap.error(f"--targets must be numbers, got {args.targets!r}")
    data = load_split()
    load0 = os.getloadavg()
    results = {m: [] for m in methods}
    for seed in range(args.seeds):
        for m in methods:
            r = run_one(m, seed, data, args.hidden, targets)
            results[m].append(r)
            for t in targets:
                x = r[t]
                print(f"seed {seed} {m:12s} target {t:<6g} reached={x['reached']!s:5s} "
                      f"iters={x['iters']:6d} grads={x['grads']:7.1f} hvps={x['hvps']:7d} "
                      f"time={x['seconds']:7.3f}s cost={x['cost']:.4f} val={x['val']:.4f}",
                      file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    P = results[methods[0]][0][targets[0]]["P"]
    lines = [
        f"# Second-order study: [64, {args.hidden}, 10] on the embedded digits",
        "",
        f"- network: [64, {args.hidden}, 10], sigmoid / softmax / log-likelihood, float64, "
        f"P = {P} parameters, lmbda = 0",
        "- data: 1397 training rows, 400 validation rows (fixed split); targets: training cost "
        "C <= " + ", ".join(f"{t:g}" for t in targets),
        f"- seeds (initial weights, shared by all methods): {args.seeds}; mean +- standard "
        f"deviation over the seeds that reached the target",
        f"- machine: {_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, fastnn {fastnn.__version__}, BLAS threads: "
        f"{args.threads if args.threads > 0 else 'default'}",
        f"- load average at start {load0[0]:.2f}, at end {load1[0]:.2f} (other processes share "
        f"the CPUs: wall times are noisy, iteration counts are not)",
        "- SGD-type rows: iterations are mini-batch steps, gradient evaluations are epochs, and the "
        "cost is checked once per epoch (whole epochs' worth of steps)",
    ]
    for target in targets:
        lines += _table(target, methods, results, args)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)
    return 0


def _table(target, methods, results, args):
    lines = [
        "", f"## Target C <= {target:g}", "",
        "| method | settings | reached | iterations | gradient evals (full-batch eq.) | cost-only "
        "evals | curvature products | wall time to target (s) | ms / iteration | val. accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for m in methods:
        rs = [r[target] for r in results[m]]
        ok = [r for r in rs if r["reached"]]
        use = ok if ok else rs
        summary[m] = {k: statistics.mean(r[k] for r in use) for k in
                      ("iters", "grads", "seconds", "per_iter", "val")}
        summary[m]["ok"] = len(ok)
        lines.append(
            f"| {m} | {DESCRIPTION[m]} | {len(ok)}/{len(rs)} | "
            f"{_stat([r['iters'] for r in use], '{:.0f}')} | "
            f"{_stat([r['grads'] for r in use], '{:.1f}')} | "
            f"{_stat([r['fevs'] for r in use], '{:.0f}')} | "
            f"{_stat([r['hvps'] for r in use], '{:.0f}')} | "
            f"{_stat([r['seconds'] for r in use], '{:.3g}')} | "
            f"{_stat([r['per_iter'] * 1e3 for r in use], '{:.2g}')} | "
            f"{_stat([r['val'] for r in use], '{:.3f}')} |")
    missed = [m for m in methods if not summary[m]["ok"]]
    if missed:
        lines += ["", "Not reached in any seed (the row shows the end of the budget): "
                  + ", ".join(f"{m} ({METHODS[m][1]} epochs/iterations)" for m in missed) + "."]
    lines += ["", f"Steps versus seconds (C <= {target:g}):", ""]
    reached = [m for m in methods if summary[m]["ok"]]
    by_iter = sorted(reached, key=lambda m: summary[m]["iters"])
    by_time = sorted(reached, key=lambda m: summary[m]["seconds"])
    lines.append("- fewest iterations first: " + ", ".join(
        f"{m} ({summary[m]['iters']:.0f})" for m in by_iter))
    lines.append("- least wall time first: " + ", ".join(
        f"{m} ({summary[m]['seconds']:.3g} s)" for m in by_time))
    sgd_like = [m for m in reached if METHODS[m][2] == "sgd"]
    second = [m for m in reached if m in ("Newton", "HessianFree")]
    if sgd_like and second:
        best_sgd = min(sgd_like, key=lambda m: summary[m]["seconds"])
        for m in second:
            s, g = summary[m], summary[best_sgd]
            fewer = s["iters"] < g["iters"]
            faster = s["seconds"] < g["seconds"]
            lines.append(
                f"- {m} needs {s['iters']:.0f} iterations, {'fewer' if fewer else 'more'} than "
                f"{best_sgd}'s {g['iters']:.0f} mini-batch steps ({g['grads']:.0f} epochs): the "
                f"book's claim {'holds' if fewer else 'does not hold'} for steps. But one iteration "
                f"costs {s['per_iter'] * 1e3:.3g} ms against {g['per_iter'] * 1e3:.3g} ms per "
                f"mini-batch step, so in wall time it is "
                + (f"{g['seconds'] / s['seconds']:.2g}x faster." if faster else
                   f"{s['seconds'] / g['seconds']:.2g}x slower."))
    disagree = [m for m in reached if by_iter.index(m) != by_time.index(m)]
    if disagree:
        lines.append("- the iteration ranking and the wall-time ranking disagree for: "
                     + ", ".join(disagree) + ". An iteration of a second-order method costs "
                     "a full-batch gradient plus its curvature work (Newton: P Hessian-vector "
                     "products and an O(P^3) factorization; Hessian-free: tens of Gauss-Newton "
                     "products and line-search evaluations; BFGS: scipy's dense update, two P x P "
                     "matrix products), "
                     "an SGD step a 10-row gradient.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
