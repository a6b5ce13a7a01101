"""pytest-benchmark micro-benchmarks: one short epoch (a few thousand rows) of each
configuration per implementation, through the adapters of ``compare.py``.

    pytest benchmarks/test_epoch_benchmarks.py --benchmark-only --benchmark-group-by=group

The full-size, interleaved comparison with its report is ``python benchmarks/compare.py``.
"""
import numpy as np
import pytest

import compare

ROWS = {"C1": 2000, "C2": 4096, "C3": 4096, "C4": 1024}
IMPLS = ["fastnn", "numpy", "torch", "sklearn", "gemm"]

_data = {}


def data(n):
    if n not in _data:
        _data[n] = compare.make_generated(n)
    return _data[n]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(compare.CONFIGS))
def test_epoch(benchmark, name, impl):
    cfg = compare.CONFIGS[name]
    X32, y = data(ROWS[name])
    X = np.ascontiguousarray(X32, cfg["dtype"])
    ad = compare.ADAPTERS[impl]()
    try:
        ad.setup(cfg, X, y)
    except compare.Skip as e:
        pytest.skip(str(e))
    benchmark.group = f"{name}: {cfg['desc']}"
    frac = benchmark.pedantic(ad.run_epoch, rounds=3, iterations=1, warmup_rounds=1)
    assert frac == 1.0
    if impl == "numpy":
        assert np.all(np.isfinite(ad.state.params))
