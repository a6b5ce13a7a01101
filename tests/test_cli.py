"""The ``fastnn`` command (fastnn.cli): train, bench, info, and its one-line errors.

Tests call ``main([...])`` in-process, and run ``python -m fastnn`` in a subprocess whose
working directory is a temporary one: the repository root holds the source package
``fastnn/`` without the compiled kernels, and that would shadow the installed one.
"""
import gzip
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn.cli import format_table, main
from fastnn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    """main(argv) in-process: (exit status, stdout, stderr)."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def run_module(*argv, cwd, timeout=300):
    """``python -m fastnn ARGV`` in a subprocess run from ``cwd`` (never the repository root)."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
             if p and os.path.abspath(p) != str(ROOT)]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "fastnn", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def table_rows(out):
    """The learning-curve table's rows: [(epoch, train cost, train acc, val cost, val acc, s)]."""
    lines = out.splitlines()
    i = next(k for k, line in enumerate(lines) if re.match(r"\s*epoch\s+train cost", line))
    rows = []
    for line in lines[i + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def assert_one_line_error(rc, out, err, *needles):
    assert rc != 0
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fastnn: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def blobs(n=600, d=5, k=3, seed=0):
    """Easily separable Gaussian blobs: a network should reach ~100 % on them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (k, d))
    y = rng.integers(0, k, n)
    X = centers[y] + rng.normal(0, 0.5, (n, d))
    return X, y


# --------------------------------------------------------------------------- train: digits


def test_train_digits_in_process(capsys, tmp_path):
    model = tmp_path / "digits.npz"
    rc, out, err = run(capsys, "train", "--epochs", "2", "--save", model)
    assert rc == 0, err
    assert "data: digits" in out and "1617 training samples" in out and "180 held-out" in out
    assert "network: [64, 30, 10] relu/softmax, cost log-likelihood" in out
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(len(r) == 6 for r in rows)
    val_acc = float(rows[-1][4].rstrip("%")) / 100
    assert val_acc > 0.85
    m = re.search(r"final held-out accuracy: ([\d.]+)%", out)
    assert m and abs(float(m.group(1)) / 100 - val_acc) < 1e-4
    # not a terminal: plain per-epoch lines, no progress bar
    assert "\r" not in out and "epoch 1/2" in out and "epoch 2/2" in out

    net = fastnn.load(model)
    assert net.sizes == (64, 30, 10)
    X, y = load_digits()
    assert np.mean(net.predict(X) == y) > 0.85


def test_train_digits_via_python_m(tmp_path):
    r = run_module("train", "--epochs", "2", "--save", "net.npz", "--seed", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = table_rows(r.stdout)
    assert len(rows) == 2
    assert float(rows[-1][4].rstrip("%")) > 85
    net = fastnn.load(tmp_path / "net.npz")
    X, y = load_digits()
    assert np.mean(net.predict(X) == y) > 0.85


def test_train_options_reach_the_network(capsys, tmp_path):
    rc, out, err = run(capsys, "train", "--hidden-sizes", "20,16", "--hidden", "tanh,relu",
                       "--output", "sigmoid", "--dtype", "float32", "--eta", "0.5",
                       "--momentum", "0.5", "--nesterov", "--lmbda", "1", "--batch-size", "20",
                       "--epochs", "3", "--validation-fraction", "0.2", "--seed", "1",
                       "--save", tmp_path / "n.npz")
    assert rc == 0, err
    assert "cost cross-entropy" in out and "Nesterov 0.5" in out and "lmbda 1" in out
    assert "359 held-out" in out and "batch 20" in out
    net = fastnn.load(tmp_path / "n.npz")
    assert net.sizes == (64, 20, 16, 10)
    assert net.hidden == ("tanh", "relu") and net.output == "sigmoid"
    assert net.cost == "cross-entropy" and net.dtype == np.float32
    assert len(table_rows(out)) == 3


def test_train_sizes_and_no_held_out(capsys):
    rc, out, err = run(capsys, "train", "--sizes", "64,10", "--epochs", "1",
                       "--validation-fraction", "0")
    assert rc == 0, err
    rows = table_rows(out)
    assert rows[0][3] == "-" and rows[0][4] == "-"
    assert "held-out accuracy" not in out


def test_progress_bar_on_a_terminal(monkeypatch, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    X, y = blobs(n=5000)
    np.savez(tmp_path / "big.npz", X=X, y=y)
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    assert main(["train", "--data", str(tmp_path / "big.npz"), "--epochs", "2"]) == 0
    out = term.getvalue()
    assert "\r" in out and "ETA" in out and "2000/4500" in out
    assert len(table_rows(out)) == 2


def test_non_finite_X_found_in_training_clears_the_progress_bar(monkeypatch, tmp_path, capsys):
    """A value that is finite in the file but overflows the float32 network is found by fit
    during its first epoch, after the progress bar has been drawn: the bar's line is cleared
    before the error is printed."""
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    X, y = blobs(n=5000)
    X[4900, 2] = 1e300
    np.savez(tmp_path / "big.npz", X=X, y=y)
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    with np.errstate(over="ignore"):
        rc = main(["train", "--data", str(tmp_path / "big.npz"), "--epochs", "2", "--dtype",
                   "float32", "--validation-fraction", "0"])
    assert rc != 0
    out = term.getvalue()
    assert "ETA" in out  # the bar was drawn, then its line blanked out last
    assert re.search(r"\r {20,}\r$", out), repr(out[-200:])
    assert "'X' parameter must be finite" in capsys.readouterr().err


def test_format_table():
    h = fastnn.History()
    h._append(epoch=0, train_cost=0.5, train_accuracy=0.9, val_cost=None, val_accuracy=None,
              seconds=0.25)
    lines = format_table(h).splitlines()
    assert lines[0].split() == ["epoch", "train", "cost", "train", "acc", "val", "cost", "val",
                                "acc", "seconds"]
    assert lines[2].split() == ["1", "0.5000", "90.00%", "-", "-", "0.250"]


# --------------------------------------------------------------------------- train: files


def test_train_npz(capsys, tmp_path):
    X, y = blobs()
    np.savez(tmp_path / "blobs.npz", X=X, y=y)
    rc, out, err = run(capsys, "train", "--data", tmp_path / "blobs.npz", "--epochs", "3",
                       "--hidden-sizes", "8", "--save", tmp_path / "m.npz")
    assert rc == 0, err
    assert "540 training samples, 60 held-out" in out and "5 features, 3 classes" in out
    assert float(table_rows(out)[-1][4].rstrip("%")) > 95
    net = fastnn.load(tmp_path / "m.npz")
    assert net.sizes == (5, 8, 3)
    assert np.mean(net.predict(X) == y) > 0.95


def test_train_npz_with_test_split(capsys, tmp_path):
    X, y = blobs(800)
    np.savez(tmp_path / "split.npz", X=X[:600], y=y[:600], X_test=X[600:], y_test=y[600:])
    rc, out, err = run(capsys, "train", "--data", tmp_path / "split.npz", "--epochs", "2")
    assert rc == 0, err
    assert "600 training samples, 200 held-out (the test split)" in out
    # an explicit fraction splits the training data and reports the test split at the end
    rc, out, err = run(capsys, "train", "--data", tmp_path / "split.npz", "--epochs", "2",
                       "--validation-fraction", "0.25")
    assert rc == 0, err
    assert "450 training samples, 150 held-out" in out
    m = re.search(r"test accuracy: ([\d.]+)% \(200 samples\)", out)
    assert m and float(m.group(1)) > 90


def test_train_csv_last_column(capsys, tmp_path):
    X, y = blobs()
    path = tmp_path / "blobs.csv"
    with open(path, "w") as f:
        f.write("a,b,c,d,e,label\n")
        for row, label in zip(X, y):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{label}\n")
    rc, out, err = run(capsys, "train", "--data", path, "--epochs", "3", "--hidden-sizes", "8")
    assert rc == 0, err
    assert "label column 5 'label'" in out and "5 features, 3 classes" in out
    assert float(table_rows(out)[-1][4].rstrip("%")) > 95


def test_train_csv_label_column_and_text_labels(capsys, tmp_path):
    X, y = blobs()
    names = np.array(["setosa", "versicolor", "virginica"])
    path = tmp_path / "flowers.tsv"
    with open(path, "w") as f:
        for row, label in zip(X, y):
            f.write(names[label] + "\t" + "\t".join(f"{v:.6f}" for v in row) + "\n")
    rc, out, err = run(capsys, "train", "--data", path, "--label-column", "0", "--epochs", "3",
                       "--hidden-sizes", "8", "--save", tmp_path / "m.npz")
    assert rc == 0, err
    assert "classes: 0=setosa, 1=versicolor, 2=virginica" in out
    assert float(table_rows(out)[-1][4].rstrip("%")) > 95
    assert fastnn.load(tmp_path / "m.npz").sizes == (5, 8, 3)


@pytest.mark.parametrize("header, option", [
    ("", []),                                                   # text labels, no header
    ("f0,f1,f2,f3,f4,species\n", []),                           # header found
    ("f0,f1,f2,f3,f4,species\n", ["--csv-header", "yes"]),
    ("0,1,2,3,4,species\n", ["--csv-header", "yes"]),           # numbers as names: say so
])
def test_train_csv_headers_and_text_labels_last(capsys, tmp_path, header, option):
    X, y = blobs(300)
    names = np.array(["a", "b", "c"])
    path = tmp_path / "t.csv"
    path.write_text(header + "".join(",".join(f"{v:.5f}" for v in row) + f",{names[label]}\n"
                                     for row, label in zip(X, y)))
    rc, out, err = run(capsys, "train", "--data", path, "--epochs", "2",
                       "--validation-fraction", "0", *option)
    assert rc == 0, err
    assert "300 training samples" in out and "5 features, 3 classes" in out
    assert "classes: 0=a, 1=b, 2=c" in out


def test_train_csv_numbered_header_of_numeric_labels(capsys, tmp_path):
    X, y = blobs(300)
    path = tmp_path / "t.csv"
    path.write_text("0,1,2,3,4,label\n" + "".join(
        ",".join(f"{v:.5f}" for v in row) + f",{label}\n" for row, label in zip(X, y)))
    rc, out, err = run(capsys, "train", "--data", path, "--epochs", "2")
    assert rc == 0, err
    assert "270 training samples, 30 held-out" in out and "3 classes" in out
    assert "label column 5 'label'" in out


def test_train_csv_via_python_m(tmp_path):
    X, y = blobs()
    np.savetxt(tmp_path / "b.csv", np.column_stack([X, y]), delimiter=",", fmt="%.6f")
    r = run_module("train", "--data", "b.csv", "--epochs", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert float(table_rows(r.stdout)[-1][4].rstrip("%")) > 90


def test_train_mnist_pickle_and_idx(capsys, tmp_path):
    rng = np.random.default_rng(0)
    splits = tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n))
                   for n in (50, 20, 20))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(splits, protocol=4)))
    rc, out, err = run(capsys, "train", "--data", "mnist", path, "--epochs", "1")
    assert rc == 0, err
    assert "50 training samples, 20 held-out (the validation split)" in out
    assert "test accuracy" in out and "(20 samples)" in out


# --------------------------------------------------------------------------- train: plot


def test_plot_writes_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    rc, out, err = run(capsys, "train", "--epochs", "2", "--plot", tmp_path / "curve.png")
    assert rc == 0, err
    data = (tmp_path / "curve.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_plot_without_matplotlib_is_one_line(capsys, monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    rc, out, err = run(capsys, "train", "--epochs", "1", "--plot", tmp_path / "c.png")
    assert_one_line_error(rc, out, err, "matplotlib", "pip install")
    assert out == ""  # failed before training
    assert not (tmp_path / "c.png").exists()


# --------------------------------------------------------------------------- errors


@pytest.fixture
def bad_files(tmp_path):
    X, y = blobs(50)
    (tmp_path / "garbage.npz").write_bytes(b"this is not a zip file")
    np.savez(tmp_path / "nokeys.npz", data=X)
    np.savez(tmp_path / "mismatch.npz", X=X, y=y[:-1])
    np.savez(tmp_path / "floaty.npz", X=X, y=y + 0.5)
    np.savez(tmp_path / "oneclass.npz", X=X, y=np.zeros(50, int))
    (tmp_path / "text.csv").write_text("1,2,0\n3,abc,1\n")
    (tmp_path / "ragged.csv").write_text("1,2,0\n3,1\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "nan.csv").write_text("1,2,0\n3,nan,1\n")
    (tmp_path / "evil.pkl.gz").write_bytes(gzip.compress(
        b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R."))
    (tmp_path / "adir").mkdir()
    return tmp_path


ERROR_CASES = [
    # (argv, exit status, words the one line must hold)
    (["train", "--data", "imagenet"], 1, ["unknown data set 'imagenet'", "digits"]),
    (["train", "--data", "digits", "extra"], 1, ["--data digits"]),
    (["train", "--data", "mnist"], 1, ["--data mnist needs one PATH"]),
    (["train", "--data", "mnist", "{d}/missing.pkl.gz"], 1, ["{d}/missing.pkl.gz"]),
    (["train", "--data", "mnist", "{d}/evil.pkl.gz"], 1, ["{d}/evil.pkl.gz", "posix.system"]),
    (["train", "--data", "mnist", "{d}/adir"], 1, ["{d}/adir", "train-images-idx3-ubyte"]),
    (["train", "--data", "fashion-mnist", "{d}/adir"], 1, ["Fashion-MNIST not found",
                                                           "{d}/adir"]),
    (["train", "--data", "{d}/nothere.csv"], 1, ["{d}/nothere.csv"]),
    (["train", "--data", "{d}/garbage.npz"], 1, ["{d}/garbage.npz", "not a readable .npz"]),
    (["train", "--data", "{d}/nokeys.npz"], 1, ["{d}/nokeys.npz", "X and y"]),
    (["train", "--data", "{d}/mismatch.npz"], 1, ["50 samples but 49 labels"]),
    (["train", "--data", "{d}/floaty.npz"], 1, ["integer class indices"]),
    (["train", "--data", "{d}/oneclass.npz"], 1, ["one class"]),
    (["train", "--data", "{d}/text.csv"], 1, ["{d}/text.csv", "abc"]),
    (["train", "--data", "{d}/ragged.csv"], 1, ["{d}/ragged.csv"]),
    (["train", "--data", "{d}/empty.csv"], 1, ["{d}/empty.csv", "no data"]),
    (["train", "--data", "{d}/text.csv", "--label-column", "7"], 1, ["out of range"]),
    (["train", "--data", "{d}/text.csv", "--label-column", "kind"], 1, ["'kind'", "header"]),
    (["train", "--data", "{d}/nan.csv"], 1, ["{d}/nan.csv", "NaN", "row 1, column 1"]),
    (["train", "--data", "{d}/nokeys.npz", "--label-column", "0"], 1, ["--label-column"]),
    (["train", "--sizes", "784,30,10"], 1, ["--sizes 784,30,10", "64"]),
    (["train", "--sizes", "64,30,5"], 1, ["--sizes 64,30,5", "10"]),
    (["train", "--hidden", "relu,tanh"], 1, ["--hidden", "1 hidden layer"]),
    (["train", "--output", "softmax", "--cost", "cross-entropy"], 1, ["cross-entropy"]),
    (["train", "--nesterov"], 1, ["--nesterov"]),
    (["train", "--save", "{d}/no/such/dir/m.npz"], 1, ["--save", "does not exist"]),
    (["train", "--save", "{d}/adir"], 1, ["--save", "directory"]),
    (["train", "--epochs", "abc"], 2, ["--epochs", "abc"]),
    (["train", "--epochs", "0"], 2, ["--epochs", ">= 1"]),
    (["train", "--eta", "-0.1"], 2, ["--eta", "> 0"]),
    (["train", "--eta", "nan"], 2, ["--eta", "finite"]),
    (["train", "--momentum", "1"], 2, ["--momentum", "[0.0, 1.0)"]),
    (["train", "--batch-size", "0"], 2, ["--batch-size"]),
    (["train", "--lmbda", "-1"], 2, ["--lmbda"]),
    (["train", "--validation-fraction", "1.5"], 2, ["--validation-fraction"]),
    (["train", "--sizes", "64,x,10"], 2, ["--sizes", "64,x,10"]),
    (["train", "--sizes", "64,30", "--hidden-sizes", "30"], 2, ["not allowed with"]),
    (["train", "--hidden", "softmax"], 2, ["--hidden", "softmax"]),
    (["train", "--dtype", "float16"], 2, ["--dtype", "float16"]),
    (["train", "--frobnicate"], 2, ["--frobnicate"]),
    (["trian"], 2, ["invalid choice", "trian"]),
    (["bench", "--benchmarks", "{d}/adir"], 1, ["compare.py not found", "{d}/adir"]),
]


@pytest.mark.parametrize("argv, status, needles", ERROR_CASES,
                         ids=[" ".join(a) for a, _, _ in ERROR_CASES])
def test_errors_are_one_line(capsys, bad_files, argv, status, needles):
    d = str(bad_files)
    rc, out, err = run(capsys, *[a.format(d=d) for a in argv])
    assert rc == status
    assert_one_line_error(rc, out, err, *[n.format(d=d) for n in needles])


def test_errors_are_one_line_via_python_m(bad_files):
    for argv, status in ((["train", "--data", "nope.npz"], 1), (["train", "--eta", "x"], 2),
                         (["train", "--data", "garbage.npz"], 1)):
        r = run_module(*argv, cwd=bad_files)
        assert r.returncode == status, r.stderr
        assert_one_line_error(r.returncode, r.stdout, r.stderr)


def test_training_divergence_is_one_line(capsys):
    rc, out, err = run(capsys, "train", "--hidden", "identity", "--output", "identity",
                       "--eta", "1e6", "--epochs", "2")
    assert_one_line_error(rc, out, err, "diverged")


def test_help_and_no_command(capsys):
    rc, out, err = run(capsys, "--help")
    assert rc == 0 and "train" in out and "bench" in out and "info" in out
    rc, out, err = run(capsys, "train", "--help")
    assert rc == 0 and "--hidden-sizes" in out and "--validation-fraction" in out
    rc, out, err = run(capsys, "--version")
    assert rc == 0 and fastnn.__version__ in out
    rc, out, err = run(capsys)
    assert rc == 2 and "usage" in err


# --------------------------------------------------------------------------- info, bench


def test_info(capsys):
    rc, out, err = run(capsys, "info")
    assert rc == 0, err
    assert f"fastnn {fastnn.__version__}" in out
    assert "dtypes: float32, float64" in out
    assert "BLAS" in out and "NumPy" in out and "SciPy" in out and "Python" in out
    assert f"kernel threads: {fastnn.get_num_threads()} " in out
    if "threadpoolctl" in out and "threadpoolctl: not installed" not in out:
        assert re.search(r"blas: \w+ .*\d+ threads", out)


def test_info_without_threadpoolctl(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    rc, out, err = run(capsys, "info")
    assert rc == 0, err
    assert "threadpoolctl is not installed" in out
    assert re.search(r"SciPy BLAS: \S+", out)


def test_info_via_python_m(tmp_path):
    r = run_module("info", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "BLAS" in r.stdout and "float32" in r.stdout


def test_bench_runs_compare(capsys):
    bench = ROOT / "benchmarks"
    if not (bench / "compare.py").is_file():
        pytest.skip("the repository's benchmarks/ directory is not here")
    rc, out, err = run(capsys, "bench", "--benchmarks", bench, "--configs", "C1", "--epochs",
                       "1", "--warmup", "0", "--samples", "300", "--impls", "fastnn,numpy",
                       "--no-rss")
    assert rc == 0, err
    assert "| C1 | fastnn |" in out and "| C1 | numpy |" in out


def test_bench_unknown_config(capsys):
    bench = ROOT / "benchmarks"
    if not (bench / "compare.py").is_file():
        pytest.skip("the repository's benchmarks/ directory is not here")
    rc, out, err = run(capsys, "bench", "--benchmarks", bench, "--configs", "C9")
    assert rc == 2
    assert_one_line_error(rc, out, err, "C9")


def test_bench_unknown_passthrough_option_is_one_line(capsys):
    bench = ROOT / "benchmarks"
    if not (bench / "compare.py").is_file():
        pytest.skip("the repository's benchmarks/ directory is not here")
    rc, out, err = run(capsys, "bench", "--benchmarks", bench, "--frobnicate", "3")
    assert rc == 2
    assert_one_line_error(rc, out, err.split("\n", 1)[1], "--frobnicate")  # after "running ..."


def test_console_script(tmp_path):
    exe = shutil.which("fastnn")
    if exe is None:
        pytest.skip("the fastnn console script is not installed")
    r = subprocess.run([exe, "info"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "float64" in r.stdout


def test_study_runs_the_second_order_study(capsys):
    """`fastnn study` finds benchmarks/second_order_study.py in the repository and runs it."""
    import pathlib
    bench = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    if not (bench / "second_order_study.py").is_file():
        pytest.skip("the repository's benchmarks/ directory is not here")
    status = main(["study", "--benchmarks", str(bench), "--seeds", "1", "--methods", "LBFGS"])
    out = capsys.readouterr().out
    assert status == 0
    assert "LBFGS" in out and "iterations" in out


def test_study_not_found_is_one_line(tmp_path, capsys):
    status = main(["study", "--benchmarks", str(tmp_path)])
    err = capsys.readouterr().err
    assert status != 0
    assert err.startswith("fastnn: error:") and "second_order_study.py not found" in err
    assert "Traceback" not in err
