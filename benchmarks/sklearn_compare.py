"""fastnn.sklearn.MLPClassifier against scikit-learn's MLPClassifier, side by side, in one run.

    python benchmarks/sklearn_compare.py [--configs S1,S2,S3] [--epochs K] [--repeats R]
                                         [--samples N] [--threads T] [--out results.md]

Both estimators get the same parameters and random_state (so the same initial weights, the
same permutation every epoch and, in float64, the same trajectory up to rounding) and train
``fit(max_iter=K)`` on the same Fashion-MNIST rows, with ``n_iter_no_change=inf`` so every
run trains exactly K epochs. The time per epoch is the wall time of ``fit`` / K (input
validation included, as users pay it). The runs of one configuration alternate between the
two libraries R times, after one untimed epoch of each; the table gives the median and
minimum seconds per epoch, the ratio of the medians (and of the median CPU times of the
process, all threads, which other busy processes disturb less), the issue's target and the
largest relative difference of the final weights (float64: rounding; float32 Adam:
rarely-active weights may part, see below).

| config | settings | target |
|---|---|---|
| S1 | scikit-learn's defaults: adam, hidden (100,), batch 'auto' = 200, float64 | >= 2.5x |
| S2 | solver='sgd' (Nesterov 0.9, learning_rate_init 0.01), batch_size=10, float64 | >= 8x |
| S3 | S1 on float32 input (both libraries keep float32) | faster than S1 |

The data is Fashion-MNIST's training set scaled to [0, 1] (the Debian package
``dataset-fashion-mnist``; see ``fastnn.datasets.load_fashion_mnist``), by default all 60 000
rows for S1/S3 and the first 10 000 for S2 (scikit-learn needs minutes per epoch there).
On a 2-core machine any other busy process disturbs the timings badly, multi-threaded BLAS
most: the load average at the start and the end is printed; rerun when it was not idle, or
compare with ``--threads 1`` (both libraries' BLAS limited to one thread via threadpoolctl).
"""
import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

CONFIGS = {
    "S1": dict(desc="defaults: adam, (100,), batch 200, float64", params={}, dtype="float64",
               samples=60000, target=2.5),
    "S2": dict(desc="sgd (Nesterov 0.9, lr 0.01), batch 10, float64",
               params=dict(solver="sgd", batch_size=10, learning_rate_init=0.01),
               dtype="float64", samples=10000, target=8.0),
    "S3": dict(desc="defaults on float32 input", params={}, dtype="float32", samples=60000,
               target=None),
}


def _load(dtype, samples):
    from fastnn.datasets import load_fashion_mnist
    (X, y), _ = load_fashion_mnist(dtype=dtype)
    return np.ascontiguousarray(X[:samples]), y[:samples]


def _time_fit(cls, params, X, y, settle=0.0):
    """(seconds, CPU seconds, fitted estimator) of one fit, after ``settle`` seconds of sleep
    (so the other library's idle BLAS threads, which spin about 0.1 s after each
    multi-threaded call, have stopped before the clock starts)."""
    from sklearn.exceptions import ConvergenceWarning
    est = cls(**params)
    if settle > 0:
        time.sleep(settle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0, c0 = time.perf_counter(), time.process_time()
        est.fit(X, y)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, est


def _max_rel(a_list, b_list):
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))
               for a, b in zip(a_list, b_list))


def run(configs, epochs, repeats, samples, settle=0.3):
    import sklearn
    from sklearn.neural_network import MLPClassifier as SkMLP
    import fastnn
    from fastnn.sklearn import MLPClassifier as FastMLP

    rows = []
    for name in configs:
        cfg = CONFIGS[name]
        n = samples or cfg["samples"]
        X, y = _load(cfg["dtype"], n)
        params = dict(hidden_layer_sizes=(100,), random_state=0, max_iter=epochs,
                      n_iter_no_change=np.inf, **cfg["params"])
        times = {"fastnn": [], "sklearn": []}
        cpus = {"fastnn": [], "sklearn": []}
        models = {}
        # one untimed epoch of each library over all the rows first (imports, first-touch
        # of the workspace, and the data's first pass: in session 11 the first timed fit of
        # S1 took 1.2-1.4x the time of the later ones in both libraries, fastnn's most)
        for cls in (FastMLP, SkMLP):
            _time_fit(cls, dict(params, max_iter=1), X, y, settle)
        for _ in range(repeats):
            for label, cls in (("fastnn", FastMLP), ("sklearn", SkMLP)):
                seconds, cpu, models[label] = _time_fit(cls, params, X, y, settle)
                times[label].append(seconds / epochs)
                cpus[label].append(cpu / epochs)
                print(f"  {name} {label:8s} {seconds / epochs:8.3f} s/epoch "
                      f"({cpu / epochs:.3f} CPU s/epoch)", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
        diff = _max_rel(models["fastnn"].coefs_ + models["fastnn"].intercepts_,
                        models["sklearn"].coefs_ + models["sklearn"].intercepts_)
        rows.append(dict(config=name, desc=cfg["desc"], n=n, fast_med=med["fastnn"],
                         fast_min=min(times["fastnn"]), sk_med=med["sklearn"],
                         sk_min=min(times["sklearn"]), ratio=med["sklearn"] / med["fastnn"],
                         cpu_ratio=cpu_med["sklearn"] / cpu_med["fastnn"],
                         target=cfg["target"], diff=diff,
                         dtype=str(models["fastnn"].coefs_[0].dtype)))
    header = (f"fastnn {fastnn.__version__}, scikit-learn {sklearn.__version__}, NumPy "
              f"{np.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"{epochs} epoch(s) per fit, {repeats} fit(s) each")
    return header, rows


def _table(header, rows, load0, load1):
    lines = [header, f"load average at start {load0}, at end {load1}", "",
             "| config | settings | rows | fastnn s/epoch (median, min) | scikit-learn s/epoch "
             "(median, min) | speed-up | CPU-time ratio | target | max rel. weight diff | dtype |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        target = "" if r["target"] is None else f">= {r['target']}x"
        lines.append(f"| {r['config']} | {r['desc']} | {r['n']} | {r['fast_med']:.3f}, "
                     f"{r['fast_min']:.3f} | {r['sk_med']:.3f}, {r['sk_min']:.3f} | "
                     f"{r['ratio']:.1f}x | {r['cpu_ratio']:.1f}x | {target} | {r['diff']:.1e} | "
                     f"{r['dtype']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="S1,S2,S3")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--samples", type=int, default=None,
                    help="rows of Fashion-MNIST to train on (default: per configuration)")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit the BLAS threads of both libraries (default: BLAS's own setting)")
    ap.add_argument("--settle", type=float, default=0.3, metavar="SECONDS",
                    help="sleep before each timed fit (default 0.3; see _time_fit)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sys.exit("scikit-learn is not installed: pip install 'fastnn[sklearn]'")
    load0 = os.getloadavg()[0]
    from threadpoolctl import threadpool_info, threadpool_limits
    try:
        with threadpool_limits(args.threads, user_api="blas"):
            threads = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
            header, rows = run(configs, args.epochs, args.repeats, args.samples, args.settle)
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    header += f", BLAS threads {threads}"
    text = _table(header, rows, f"{load0:.2f}", f"{os.getloadavg()[0]:.2f}")
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
