"""Saving and loading: exact round trips, atomic writes, and clear errors for
corrupt or foreign files."""
import copy
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest

import fastnn
from conftest import OUTPUT_COST, np_forward

X_PROBE = np.random.default_rng(99).standard_normal((9, 4))


def _trained(sizes=(4, 5, 3), dtype="float64", **kw):
    net = fastnn.Network(list(sizes), dtype=dtype, seed=1, **kw)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, sizes[0]))
    y = rng.integers(0, sizes[-1], 30) if sizes[-1] > 1 else rng.integers(0, 2, 30)
    net.fit(X, y, epochs=1, batch_size=7, optimizer=fastnn.SGD(eta=0.1, momentum=0.5))
    return net


def assert_same_network(a, b):
    assert type(b) is fastnn.Network
    assert b.sizes == a.sizes
    assert b.hidden == a.hidden and b.output == a.output and b.cost == a.cost
    assert b.activations == a.activations
    assert b.dtype == a.dtype and b.params.dtype == a.params.dtype
    assert b.init == a.init
    np.testing.assert_array_equal(b.params, a.params)
    for Wa, Wb, ba, bb in zip(a.weights, b.weights, a.biases, b.biases):
        np.testing.assert_array_equal(Wb, Wa)
        np.testing.assert_array_equal(bb, ba)
        assert np.shares_memory(Wb, b.params) and np.shares_memory(bb, b.params)
    X = X_PROBE[:, :a.sizes[0]] if a.sizes[0] <= 4 else np.ones((3, a.sizes[0]))
    np.testing.assert_array_equal(b.feedforward(X), a.feedforward(X))
    assert repr(b) == repr(a)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("output,cost", OUTPUT_COST)
def test_round_trip_every_output_and_cost(tmp_path, dtype, output, cost):
    net = _trained(dtype=dtype, hidden="tanh", output=output, cost=cost)
    path = tmp_path / "net.npz"
    net.save(path)
    back = fastnn.load(path)
    assert_same_network(net, back)
    assert back.params is not net.params


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trip_per_layer_hidden_and_init(tmp_path, dtype):
    net = fastnn.Network([4, 6, 5, 3], hidden=["relu", "tanh"], output="softmax", cost="log-likelihood",
                         dtype=dtype, init="he", seed=3)
    net.params[:] += np.asarray(np.random.default_rng(0).standard_normal(net.n_params) * 1e-3, dtype)
    net.save(str(tmp_path / "n"))
    back = fastnn.load(str(tmp_path / "n"))
    assert back.hidden == ("relu", "tanh") and back.init == "he"
    assert_same_network(net, back)


def test_round_trip_keeps_float32_bits_exactly(tmp_path):
    net = fastnn.Network([4, 3], hidden=[], dtype="float32", seed=0)
    # values that float64 <-> float32 conversions or text formats would alter
    special = np.array([np.float32(1) / 3, np.finfo(np.float32).tiny, np.finfo(np.float32).max, -0.0,
                        np.nextafter(np.float32(1), np.float32(2))], dtype=np.float32)
    net.params[:special.size] = special
    net.save(tmp_path / "f32")
    back = fastnn.load(tmp_path / "f32")
    assert back.params.dtype == np.float32
    assert back.params.tobytes() == net.params.tobytes()


def test_round_trip_single_output_and_no_hidden_layer(tmp_path):
    for net in (_trained((4, 1)), fastnn.Network([4, 2], hidden=[], output="identity", cost="quadratic",
                                                 seed=5)):
        net.save(tmp_path / "x")
        assert_same_network(net, fastnn.load(tmp_path / "x"))


def test_loaded_network_trains_like_the_original(tmp_path):
    net = _trained()
    net.save(tmp_path / "a")
    back = fastnn.load(tmp_path / "a")
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    for n in (net, back):
        n.fit(X, y, epochs=2, batch_size=5, seed=1, optimizer=fastnn.SGD(eta=0.2))
    np.testing.assert_array_equal(back.params, net.params)


def test_file_contents_follow_the_documented_format(tmp_path):
    net = _trained()
    net.save(tmp_path / "fmt")
    with np.load(tmp_path / "fmt", allow_pickle=False) as data:
        assert sorted(data.files) == ["meta", "params"]
        meta = json.loads(str(data["meta"][()]))
        params = data["params"]
    assert meta["format"] == "fastnn.Network" and meta["version"] == 1
    assert meta["sizes"] == [4, 5, 3] and meta["dtype"] == "float64"
    assert meta["hidden"] == ["sigmoid"] and meta["output"] == "sigmoid"
    assert meta["cost"] == "cross-entropy" and meta["n_params"] == net.n_params
    np.testing.assert_array_equal(params, net.params)
    # W_0 row-major (out, in) first, then b_0
    np.testing.assert_array_equal(params[:20].reshape(5, 4), net.weights[0])
    np.testing.assert_array_equal(params[20:25], net.biases[0])


# --------------------------------------------------------------------------- the file name


@pytest.mark.parametrize("name", ["model", "model.bin", "model.npz", "my.net.v1", "with space"])
def test_saved_file_name_is_used_exactly(tmp_path, name):
    net = _trained()
    net.save(tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == [name]
    assert_same_network(net, fastnn.load(tmp_path / name))
    net.save(str(tmp_path / name))  # str path, overwriting
    assert sorted(os.listdir(tmp_path)) == [name]


def test_save_overwrites_and_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = _trained(), fastnn.Network([2, 2], seed=9)
    a.save("net")
    b.save("net")
    assert_same_network(b, fastnn.load("net"))
    assert os.listdir(".") == ["net"]


# --------------------------------------------------------------------------- atomic save


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_save_is_atomic(tmp_path, monkeypatch, exc):
    old = _trained()
    path = tmp_path / "net.npz"
    old.save(path)
    before = path.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    real_savez = np.savez

    def half_write(file, *args, **kwargs):
        buf = io.BytesIO()
        real_savez(buf, *args, **kwargs)
        file.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # a half-written archive ...
        raise exc("disk full")  # ... then the failure

    monkeypatch.setattr(np, "savez", half_write)
    new = fastnn.Network([4, 7, 3], seed=8)
    with pytest.raises(exc):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the previous file is intact
    assert sorted(os.listdir(tmp_path)) == listing  # and no temporary file is left
    assert_same_network(old, fastnn.load(path))


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise Boom("no")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(Boom):
        _trained().save(tmp_path / "net")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_save_into_missing_directory_fails_cleanly(tmp_path):
    with pytest.raises(OSError):
        _trained().save(tmp_path / "no" / "such" / "dir" / "net")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- bad files


@pytest.fixture
def saved(tmp_path):
    net = _trained()
    path = tmp_path / "good.npz"
    net.save(path)
    return path


def test_truncated_file_at_every_length_is_a_value_error(saved, tmp_path):
    data = saved.read_bytes()
    bad = tmp_path / "bad"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            fastnn.load(bad)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("length", [0, 1, 7, 100, 5000])
def test_random_bytes_is_a_value_error(tmp_path, seed, length):
    path = tmp_path / "random"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="random"):
        fastnn.load(path)


def test_random_bytes_after_zip_magic_is_a_value_error(tmp_path):
    path = tmp_path / "fakezip"
    for seed in range(20):
        tail = np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes()
        path.write_bytes(b"PK\x03\x04" + tail)
        with pytest.raises(ValueError):
            fastnn.load(path)
        path.write_bytes(b"\x93NUMPY" + tail)
        with pytest.raises(ValueError):
            fastnn.load(path)


def _central_directory_entries(data):
    pos, out = 0, []
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        if pos < 0:
            return out
        out.append(pos)
        pos += 4


@pytest.mark.parametrize("field,offset,value", [
    ("flags-encrypted", 8, 0x01), ("flags-patched", 8, 0x20), ("version-needed", 6, 0xFF),
    ("compression-method", 10, 99),
])
@pytest.mark.parametrize("member", [0, 1])
def test_corrupt_zip_header_fields_are_value_errors(saved, tmp_path, field, offset, value, member):
    """zipfile raises NotImplementedError / RuntimeError for these; load must still say ValueError."""
    data = bytearray(saved.read_bytes())
    entry = _central_directory_entries(bytes(data))[member]
    data[entry + offset] |= value
    bad = tmp_path / "corrupt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        fastnn.load(bad)


def test_any_flipped_byte_loads_or_is_a_value_error(saved, tmp_path):
    """Flipped bytes either load a network (if they hit only parameter values) or raise ValueError."""
    data = bytes(saved.read_bytes())
    bad = tmp_path / "flipped"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile / numpy warn about some corruptions; fast path
        for pos in range(len(data)):
            for bit in (0xFF, 0x20):
                mutated = bytearray(data)
                mutated[pos] ^= bit
                bad.write_bytes(bytes(mutated))
                try:
                    net = fastnn.load(bad)
                except ValueError:
                    continue
                assert isinstance(net, fastnn.Network)


def test_json_and_text_files_are_value_errors(tmp_path):
    net = _trained()
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"sizes": list(net.sizes), "weights": [w.tolist() for w in net.weights],
                                "biases": [b.tolist() for b in net.biases], "cost": "CrossEntropyCost"}))
    with pytest.raises(ValueError, match="net.json"):
        fastnn.load(path)
    path.write_text("")
    with pytest.raises(ValueError):
        fastnn.load(path)


def test_pickle_file_is_a_value_error_and_is_not_executed(tmp_path):
    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps(_trained()))
    with pytest.raises(ValueError):
        fastnn.load(path)


def test_plain_npy_file_is_a_value_error(tmp_path):
    path = tmp_path / "params.npy"
    np.save(path, _trained().params)
    with pytest.raises(ValueError):
        fastnn.load(path)


def _write_npz(path, **members):
    with open(path, "wb") as fh:
        np.savez(fh, **members)
    return path


def _meta(**overrides):
    meta = {"format": "fastnn.Network", "version": 1, "sizes": [4, 5, 3], "hidden": ["sigmoid"],
            "output": "sigmoid", "cost": "cross-entropy", "dtype": "float64", "init": "default",
            "n_params": 43, "fastnn_version": "0.1.0"}
    meta.update(overrides)
    return np.array(json.dumps(meta))


def test_valid_hand_written_file_loads(tmp_path):
    params = np.arange(43, dtype=np.float64)
    net = fastnn.load(_write_npz(tmp_path / "ok", meta=_meta(), params=params))
    np.testing.assert_array_equal(net.params, params)


@pytest.mark.parametrize("members", [
    dict(x=np.zeros(3)),
    dict(meta=_meta()),
    dict(params=np.zeros(43)),
    dict(meta=_meta(), params=np.zeros(43), extra=np.zeros(1)),
    dict(meta=_meta(), weights=np.zeros(43)),
], ids=["foreign", "no-params", "no-meta", "extra-member", "renamed-member"])
def test_npz_with_other_members_is_a_value_error(tmp_path, members):
    with pytest.raises(ValueError, match="members"):
        fastnn.load(_write_npz(tmp_path / "other.npz", **members))


@pytest.mark.parametrize("meta,match", [
    (_meta(format="keras.Model"), "keras.Model"),
    (_meta(format=None), "format"),
    (_meta(version=2), "version 2"),
    (_meta(version="1"), "version"),
    (np.array(json.dumps([1, 2, 3])), "format"),
    (np.array("not json"), "not a readable"),
    (np.array(json.dumps({"version": 1})), "format"),
], ids=["foreign-format", "null-format", "newer-version", "string-version", "json-list", "not-json",
        "no-format"])
def test_wrong_format_or_version_is_a_value_error(tmp_path, meta, match):
    with pytest.raises(ValueError, match=match):
        fastnn.load(_write_npz(tmp_path / "bad", meta=meta, params=np.zeros(43)))


@pytest.mark.parametrize("meta,params", [
    (_meta(), np.zeros(42)),
    (_meta(), np.zeros((43, 1))),
    (_meta(), np.zeros(43, dtype=np.float32)),
    (_meta(), np.zeros(43, dtype=np.int64)),
    (_meta(dtype="float32"), np.zeros(43)),
    (_meta(sizes=[4, 5]), np.zeros(43)),
    (_meta(sizes=[4]), np.zeros(43)),
    (_meta(sizes="453"), np.zeros(43)),
    (_meta(sizes=[4, -5, 3]), np.zeros(43)),
    (_meta(hidden=["softmax"]), np.zeros(43)),
    (_meta(hidden=["sigmoid", "tanh"]), np.zeros(43)),
    (_meta(cost="log-likelihood"), np.zeros(43)),
    (_meta(output="nope"), np.zeros(43)),
    (_meta(dtype="int8"), np.zeros(43)),
    (_meta(init="nope"), np.zeros(43)),
    (_meta(sizes=None), np.zeros(43)),
], ids=lambda v: None)
def test_inconsistent_meta_or_params_is_a_value_error(tmp_path, meta, params):
    with pytest.raises(ValueError):
        fastnn.load(_write_npz(tmp_path / "bad", meta=meta, params=params))


def test_meta_missing_fields_is_a_value_error(tmp_path):
    for key in ("sizes", "hidden", "output", "cost", "dtype"):
        meta = json.loads(str(_meta()))
        del meta[key]
        with pytest.raises(ValueError):
            fastnn.load(_write_npz(tmp_path / "bad", meta=np.array(json.dumps(meta)), params=np.zeros(43)))


def test_pickled_member_is_a_value_error(tmp_path):
    path = _write_npz(tmp_path / "obj", meta=np.array([{"format": "fastnn.Network"}], dtype=object),
                      params=np.zeros(43))
    with pytest.raises(ValueError):
        fastnn.load(path)


def test_zip_without_npy_members_is_a_value_error(tmp_path):
    path = tmp_path / "plain.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.npy", b"this is not an npy file")
        zf.writestr("params.npy", b"\x00" * 10)
    with pytest.raises(ValueError):
        fastnn.load(path)


def test_huge_sizes_in_header_is_a_value_error_without_allocating(tmp_path):
    """The header is checked against the stored params before any allocation (2 PiB here)."""
    path = _write_npz(tmp_path / "huge", meta=_meta(sizes=[2 ** 24, 2 ** 24], hidden=[], n_params=3),
                      params=np.zeros(3))
    with pytest.raises(ValueError):
        fastnn.load(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        fastnn.load(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError):
        fastnn.load(str(tmp_path / "nothing-here.npz"))


def test_directory_is_a_value_error_or_os_error(tmp_path):
    with pytest.raises((ValueError, IsADirectoryError)):
        fastnn.load(tmp_path)


# --------------------------------------------------------------------------- pickle / copy


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pickle_round_trip(dtype):
    net = fastnn.Network([4, 6, 5, 3], hidden=["relu", "identity"], output="softmax",
                         cost="log-likelihood", dtype=dtype, init="glorot", seed=2)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(net, protocol=protocol))
        assert_same_network(net, back)


@pytest.mark.parametrize("how", ["copy", "copy.copy", "copy.deepcopy"])
def test_copies_are_equal_and_independent(how):
    net = _trained(dtype="float32", hidden="relu")
    other = {"copy": net.copy, "copy.copy": lambda: copy.copy(net),
             "copy.deepcopy": lambda: copy.deepcopy(net)}[how]()
    assert_same_network(net, other)
    before = net.params.copy()
    other.weights[0][0, 0] += 1.0
    other.params[-1] = 7.0
    np.testing.assert_array_equal(net.params, before)
    assert other.params[-1] == 7.0 and other.weights[0][0, 0] == before[0] + 1.0
    # the copy's views alias its own buffer, and it trains independently
    rng = np.random.default_rng(0)
    other.fit(rng.standard_normal((10, 4)), rng.integers(0, 3, 10), epochs=1)
    np.testing.assert_array_equal(net.params, before)


def test_loaded_network_output_matches_independent_forward(tmp_path):
    net = _trained(hidden="tanh", output="softmax", cost="log-likelihood")
    net.save(tmp_path / "n")
    back = fastnn.load(tmp_path / "n")
    _, As = np_forward(back.sizes, back.activations, back.params, X_PROBE)
    np.testing.assert_allclose(back.feedforward(X_PROBE), As[-1], rtol=1e-12)
