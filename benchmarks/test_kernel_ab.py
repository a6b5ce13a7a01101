"""Self-checks of kernel_ab.py (the interleaved A/B timing of two versions of the kernels):
it rejects malformed shapes, and timing the working tree against itself builds, runs and
finds the two versions' results equal bit for bit. No timing is asserted."""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kernel_ab  # noqa: E402

needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None
    or not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
    reason="kernel_ab compiles the kernels: needs gcc and Python's headers")


@pytest.mark.parametrize("text,match", [
    ("update:d:10", "shape must be"),
    ("backward:d:10:8", "shape must be"),
    ("update:q:10:8", "shape must be"),
    ("update:d:0:8", "need 1 <= m"),
    ("update:d:10:8:900", "need 1 <= m"),
    ("update:d:10:8:784:sgd", "rule must be one of"),
])
def test_malformed_shapes_are_rejected_with_the_text_given(text, match):
    with pytest.raises(SystemExit, match=match):
        kernel_ab.parse_shape(text, 784)


def test_shapes_default_to_the_whole_fan_in_and_momentum_or_nesterov_for_sparse():
    assert kernel_ab.parse_shape("update:d:10:8", 784)[1:] == (0, False, 10, 8, 784, 1)
    assert kernel_ab.parse_shape("sparse:s:64:100:392", 784)[1:] == (1, True, 64, 100, 392, 2)
    assert kernel_ab.parse_shape("forward:s:64:30", 500)[1:] == (2, True, 64, 30, 500, 1)
    assert kernel_ab.parse_shape("update:d:200:100:392:adam", 784)[-1] == 3


def test_an_unknown_revision_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="cannot read src/fastnn/_small.h at revision"):
        kernel_ab.headers_from("no-such-revision", os.path.dirname(HERE), str(tmp_path))


@needs_gcc
def test_the_working_tree_against_itself_gives_the_same_bits_for_every_kind_of_shape():
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "kernel_ab.py"), "--base", "WORKTREE",
         "--chunk", "2", "--chunks", "4", "--pool", "50", "--fan-in", "100",
         "update:d:10:8", "update:s:40:12:64:nesterov", "update:d:9:5:100:adam",
         "sparse:s:32:20", "forward:d:10:7", "forward:s:13:30"],
        check=True, capture_output=True, text=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and ":" in line]
    assert len(rows) == 6
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == "yes", row
        assert float(cells[1]) > 0 and float(cells[2]) > 0
