"""pytest configuration for ``pytest benchmarks/`` (run with --import-mode=importlib from
pyproject.toml): makes the baseline modules importable by their plain names and, when
pytest-benchmark is missing, supplies a stand-in ``benchmark`` fixture that calls the
function once, so the benchmark tests still run as smoke tests."""
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

try:
    import pytest_benchmark  # noqa: F401
except ImportError:
    class _OneShot:
        group = None

        def __call__(self, fn, *args, **kwargs):
            return fn(*args, **kwargs)

        def pedantic(self, fn, args=(), kwargs=None, setup=None, rounds=1, iterations=1,
                     warmup_rounds=0):
            if setup is not None:
                setup()
            return fn(*args, **(kwargs or {}))

    @pytest.fixture
    def benchmark():
        return _OneShot()
