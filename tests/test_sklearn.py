"""fastnn.sklearn against scikit-learn itself: its estimator checks, its trajectories
(same initial weights, data order and settings -> the same parameters and losses to
float64 rounding), its meta-estimators, and the published Fashion-MNIST accuracy."""
import copy
import io
import os
import pickle
import subprocess
import sys
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network as sk_nn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

RTOL = 1e-10  # "float64 rounding" over a few epochs: observed ~1e-15


# --------------------------------------------------------------------------- data

def _X(n=103, d=7, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def _targets(kind, n=103, seed=0):
    rng = np.random.default_rng(seed + 100)
    if kind == "multiclass":
        return np.array(["cat", "dog", "emu"])[rng.integers(0, 3, n)]
    if kind == "binary":
        return rng.integers(0, 2, n) * 5 - 1          # labels -1 and 4
    if kind == "multilabel":
        return rng.integers(0, 2, (n, 3))
    if kind == "regression":
        return rng.standard_normal(n) * 3 + 1
    if kind == "multioutput":
        return rng.standard_normal((n, 3)) * [1, 2, 3]
    raise AssertionError(kind)


def _pair(kind, **params):
    """(fastnn estimator, scikit-learn estimator) with the same parameters."""
    if kind in ("regression", "multioutput"):
        return MLPRegressor(**params), sk_nn.MLPRegressor(**params)
    return MLPClassifier(**params), sk_nn.MLPClassifier(**params)


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_same_model(fn, sk, rtol=RTOL):
    """Parameters, loss curve and bookkeeping of fn equal sk's up to rtol."""
    assert len(fn.coefs_) == len(sk.coefs_)
    for a, b in zip(fn.coefs_, sk.coefs_):
        assert a.shape == b.shape
        assert _max_rel(a, b) <= rtol
    for a, b in zip(fn.intercepts_, sk.intercepts_):
        assert a.shape == b.shape
        assert _max_rel(a, b) <= rtol
    for name in ("n_iter_", "t_", "n_layers_", "n_outputs_", "out_activation_", "n_features_in_"):
        assert getattr(fn, name) == getattr(sk, name), name
    if hasattr(sk, "classes_"):
        np.testing.assert_array_equal(fn.classes_, sk.classes_)
    if hasattr(sk, "loss_curve_"):
        assert len(fn.loss_curve_) == len(sk.loss_curve_)
        np.testing.assert_allclose(fn.loss_curve_, sk.loss_curve_, rtol=rtol, atol=0)
        for name in ("best_loss_", "best_validation_score_"):
            a, b = getattr(fn, name), getattr(sk, name)
            assert (a is None) == (b is None), name
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=0)
        if sk.validation_scores_ is None:
            assert fn.validation_scores_ is None
        else:
            np.testing.assert_allclose(fn.validation_scores_, sk.validation_scores_, rtol=rtol)
    np.testing.assert_allclose(fn.loss_, sk.loss_, rtol=rtol, atol=0)


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


# --------------------------------------------------------------------------- scikit-learn's checks

# scikit-learn runs its own MLPs through these checks with max_iter=100
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_tags_declare_what_the_estimators_support():
    from sklearn.utils import get_tags
    c, r = get_tags(MLPClassifier()), get_tags(MLPRegressor())
    assert c.input_tags.sparse and r.input_tags.sparse
    assert c.classifier_tags.multi_label
    assert r.target_tags.multi_output
    assert not c._skip_test and not r._skip_test


# --------------------------------------------------------------------------- initialization

@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "identity"])
def test_initial_weights_are_scikit_learns(activation):
    X, y = _X(), _targets("multiclass")
    params = dict(hidden_layer_sizes=(6, 4), activation=activation, random_state=3,
                  solver="sgd", max_iter=1, learning_rate_init=1e-300, momentum=0)
    fn, sk = _pair("multiclass", **params)
    fn.fit(X, y)
    sk.fit(X, y)
    # one step of size 1e-300 leaves the initial weights
    for a, b in zip(fn.coefs_ + fn.intercepts_, sk.coefs_ + sk.intercepts_):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- trajectories

SGD_VARIANTS = {
    "nesterov": dict(solver="sgd", learning_rate_init=0.05, momentum=0.9, nesterovs_momentum=True),
    "momentum": dict(solver="sgd", learning_rate_init=0.05, momentum=0.9, nesterovs_momentum=False),
    "plain": dict(solver="sgd", learning_rate_init=0.2, momentum=0.0),
    "adam": dict(solver="adam", learning_rate_init=0.01),
}


@pytest.mark.parametrize("variant", sorted(SGD_VARIANTS))
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression", "multioutput"])
def test_stochastic_trajectory_matches_sklearn(kind, variant):
    X, y = _X(), _targets(kind)
    params = dict(hidden_layer_sizes=(9, 5), random_state=1, max_iter=8, batch_size=20,
                  alpha=1e-3, tol=0, **SGD_VARIANTS[variant])
    fn, sk = _pair(kind, **params)
    assert_same_model(fn.fit(X, y), sk.fit(X, y))
    assert fn.n_iter_ == 8
    np.testing.assert_allclose(fn.predict(X[:20]) if kind in ("regression", "multioutput")
                               else fn.predict_proba(X[:20]),
                               sk.predict(X[:20]) if kind in ("regression", "multioutput")
                               else sk.predict_proba(X[:20]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "identity"])
@pytest.mark.parametrize("variant", ["nesterov", "adam"])
def test_trajectory_for_every_hidden_activation(activation, variant):
    X, y = _X(), _targets("multiclass")
    params = dict(hidden_layer_sizes=(8,), activation=activation, random_state=5, max_iter=6,
                  batch_size=16, tol=0, **SGD_VARIANTS[variant])
    assert_same_model(*[est.fit(X, y) for est in _pair("multiclass", **params)])


@pytest.mark.parametrize("settings", [
    dict(learning_rate="invscaling", power_t=0.3, learning_rate_init=0.5),
    dict(learning_rate="adaptive", tol=0.05, n_iter_no_change=1, learning_rate_init=0.3),
    dict(learning_rate="constant", tol=0.05, n_iter_no_change=2, learning_rate_init=0.3),
    dict(shuffle=False),
    dict(batch_size="auto", alpha=0.5),
    dict(batch_size=500),                      # clipped to n, with scikit-learn's warning
    dict(hidden_layer_sizes=()),               # no hidden layer
    dict(hidden_layer_sizes=7, random_state="RandomState(11)"),
], ids=["invscaling", "adaptive", "converged", "no-shuffle", "auto-batch", "big-batch",
        "no-hidden", "int-width-randomstate"])
@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_sgd_schedules_and_stopping_match_sklearn(kind, settings):
    X, y = _X(), _targets(kind)
    params = dict(hidden_layer_sizes=(6,), solver="sgd", random_state=2, max_iter=25,
                  batch_size=10, momentum=0.5, learning_rate_init=0.05)
    params.update(settings)
    if kind == "regression":  # a smaller step for the squared error (targets of scale 3)
        params["learning_rate_init"] /= 10
    sk_params = dict(params)
    if params["random_state"] == "RandomState(11)":  # a generator each, consumed by the fit
        params["random_state"] = np.random.RandomState(11)
        sk_params["random_state"] = np.random.RandomState(11)
    fn = (MLPRegressor if kind == "regression" else MLPClassifier)(**params)
    sk = (sk_nn.MLPRegressor if kind == "regression" else sk_nn.MLPClassifier)(**sk_params)
    with warnings.catch_warnings(record=True) as w_fn:
        warnings.simplefilter("always")
        fn.fit(X, y)
    with warnings.catch_warnings(record=True) as w_sk:
        warnings.simplefilter("always")
        sk.fit(X, y)
    assert_same_model(fn, sk)
    assert sorted(str(w.message) for w in w_fn) == sorted(str(w.message) for w in w_sk)
    if settings.get("learning_rate") in ("adaptive", "invscaling"):
        assert fn._optimizer.eta == pytest.approx(sk._optimizer.learning_rate, rel=1e-15)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression"])
@pytest.mark.parametrize("variant", ["nesterov", "adam"])
def test_early_stopping_matches_sklearn(kind, variant):
    X, y = _X(n=150), _targets(kind, n=150)
    params = dict(hidden_layer_sizes=(10,), random_state=4, max_iter=60, batch_size=16,
                  early_stopping=True, validation_fraction=0.2, n_iter_no_change=3, tol=1e-3,
                  **SGD_VARIANTS[variant])
    fn, sk = _pair(kind, **params)
    fn.fit(X, y)
    sk.fit(X, y)
    assert_same_model(fn, sk)
    assert fn.best_loss_ is None and len(fn.validation_scores_) == fn.n_iter_


def test_verbose_output_matches_sklearn():
    X, y = _X(), _targets("multiclass")
    params = dict(hidden_layer_sizes=(5,), solver="sgd", learning_rate="adaptive", tol=0.05,
                  n_iter_no_change=1, random_state=0, max_iter=6, verbose=True,
                  early_stopping=True, learning_rate_init=0.3)
    out = []
    for est in _pair("multiclass", **params):
        buf = io.StringIO()
        with redirect_stdout(buf):
            est.fit(X, y)
        out.append(buf.getvalue())
    assert "Iteration 1, loss = " in out[0]
    assert out[0] == out[1]


@pytest.mark.parametrize("variant", ["nesterov", "adam"])
@pytest.mark.parametrize("kind", ["multiclass", "multilabel", "multioutput"])
def test_partial_fit_and_warm_start_match_sklearn(kind, variant):
    X, y = _X(n=120), _targets(kind, n=120)
    params = dict(hidden_layer_sizes=(7,), random_state=6, batch_size=25, tol=0,
                  **SGD_VARIANTS[variant])
    fn, sk = _pair(kind, **params)
    # classes: required for classifiers (for multilabel too: the label indices)
    extra = {"multiclass": {"classes": np.unique(y)}, "multilabel": {"classes": np.arange(3)},
             "multioutput": {}}[kind]
    for lo, hi in [(0, 50), (50, 120), (10, 90)]:
        fn.partial_fit(X[lo:hi], y[lo:hi], **extra)
        sk.partial_fit(X[lo:hi], y[lo:hi], **extra)
        assert_same_model(fn, sk)
        extra = {}
    # fit after partial_fit starts a new model; warm_start continues it with a new optimizer
    fn.set_params(warm_start=True, max_iter=3)
    sk.set_params(warm_start=True, max_iter=3)
    for _ in range(2):
        assert_same_model(fn.fit(X, y), sk.fit(X, y))
    # partial_fit after a fit keeps that fit's optimizer state
    assert_same_model(fn.partial_fit(X[:60], y[:60]), sk.partial_fit(X[:60], y[:60]))


def test_partial_fit_with_classes_missing_from_the_batch():
    X, y = _X(n=60), _targets("multiclass", n=60)
    classes = np.array(["ant", "cat", "dog", "emu"])      # 'ant' never occurs
    fn, sk = _pair("multiclass", hidden_layer_sizes=(5,), random_state=0, solver="sgd")
    for est in (fn, sk):
        est.partial_fit(X[:30], y[:30], classes=classes)
        est.partial_fit(X[30:], y[30:])
    assert_same_model(fn, sk)
    assert fn.predict_proba(X).shape == (60, 4)


# --------------------------------------------------------------------------- lbfgs

@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression"])
@pytest.mark.parametrize("max_iter", [15, 50])
def test_lbfgs_follows_sklearn_and_reaches_its_loss(kind, max_iter):
    """L-BFGS-B is invariant under the reordering of the parameters (fastnn packs W (out, in)
    per layer, scikit-learn all coefs then all intercepts), so both runs take the same steps up
    to rounding. Over hundreds of iterations of a non-convex problem the rounding differences
    grow until the runs part (and end on either side); over tens they agree."""
    X, y = _X(), _targets(kind)
    params = dict(hidden_layer_sizes=(12,), solver="lbfgs", random_state=0, max_iter=max_iter,
                  alpha=1e-2)
    fn, sk = _pair(kind, **params)
    fn.fit(X, y)
    sk.fit(X, y)
    assert fn.n_iter_ == sk.n_iter_ <= max_iter
    assert fn.loss_ <= sk.loss_ * (1 + 1e-9)
    for a, b in zip(fn.coefs_ + fn.intercepts_, sk.coefs_ + sk.intercepts_):
        assert _max_rel(a, b) < 1e-6
    assert not hasattr(fn, "loss_curve_")


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_lbfgs_converged_loss_on_a_convex_problem(kind):
    """Without hidden layers the problem is convex: both converge to the same minimum."""
    X, y = _X(), _targets(kind)
    fn, sk = _pair(kind, hidden_layer_sizes=(), solver="lbfgs", random_state=0, max_iter=5000,
                   alpha=1e-1, tol=1e-10)
    fn.fit(X, y)
    sk.fit(X, y)
    assert fn.loss_ <= sk.loss_ * (1 + 1e-9)


def test_lbfgs_multioutput_loss_is_sklearns_convention():
    X, y = _X(), _targets("multioutput")
    alpha = 0.3
    fn = MLPRegressor(hidden_layer_sizes=(6,), solver="lbfgs", random_state=0, max_iter=30,
                      alpha=alpha).fit(X, y)
    p = fn.predict(X)
    l2 = sum(np.sum(c ** 2) for c in fn.coefs_)
    expected = 0.5 * np.mean((y - p) ** 2) + 0.5 * alpha * l2 / X.shape[0]
    assert fn.loss_ == pytest.approx(expected, rel=1e-12)


def test_lbfgs_has_no_partial_fit():
    est = MLPClassifier(solver="lbfgs")
    assert not hasattr(est, "partial_fit")
    with pytest.raises(AttributeError, match="partial_fit"):
        est.partial_fit
    assert hasattr(MLPRegressor(solver="sgd"), "partial_fit")


def test_lbfgs_convergence_warning():
    X, y = _X(), _targets("multiclass")
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        MLPClassifier(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=2, random_state=0).fit(X, y)


# --------------------------------------------------------------------------- the model

def test_coefs_are_views_and_assignment_copies():
    X, y = _X(), _targets("multiclass")
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, y)
    net = clf.network_
    assert [c.shape for c in clf.coefs_] == [(7, 4), (4, 3)]
    assert [b.shape for b in clf.intercepts_] == [(4,), (3,)]
    assert all(np.shares_memory(c, net.params) for c in clf.coefs_ + clf.intercepts_)
    before = clf.predict_proba(X)
    clf.coefs_[1][:] = 0          # in place: the model changes
    clf.intercepts_[1][:] = 0
    np.testing.assert_allclose(clf.predict_proba(X), 1 / 3)
    new = [np.ones((7, 4)), np.full((4, 3), 0.5)]
    clf.coefs_ = new              # assignment copies the values in
    new[0][:] = 7
    np.testing.assert_array_equal(clf.coefs_[0], 1.0)
    assert not np.allclose(clf.predict_proba(X), before)
    with pytest.raises(ValueError, match="coefs_ must be a list of 2 arrays"):
        clf.coefs_ = [np.ones((4, 7)), np.ones((4, 3))]


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_float32_stays_float32(solver):
    X, y = _X(dtype=np.float32), _targets("multiclass")
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=5, random_state=0).fit(X, y)
    assert clf.network_.dtype == np.float32
    assert all(c.dtype == np.float32 for c in clf.coefs_ + clf.intercepts_)
    assert clf.predict_proba(X).dtype == np.float32
    # from the same initial weights as float64 (scikit-learn draws in float64, then casts)
    sk = sk_nn.MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=5,
                             random_state=0).fit(X, y)
    for a, b in zip(clf.coefs_, sk.coefs_):
        assert _max_rel(a, b) < 1e-3
    reg = MLPRegressor(hidden_layer_sizes=(8,), solver=solver, max_iter=5, random_state=0)
    assert reg.fit(X, _targets("regression")).predict(X).dtype == np.float32


@pytest.mark.parametrize("variant", ["nesterov", "adam"])
def test_float32_trajectory_matches_sklearn_to_float32_rounding(variant):
    X, y = _X(n=300, d=20, dtype=np.float32), _targets("multiclass", n=300)
    params = dict(hidden_layer_sizes=(30,), random_state=0, max_iter=6, batch_size=32, tol=0,
                  **SGD_VARIANTS[variant])
    fn, sk = [est.fit(X, y) for est in _pair("multiclass", **params)]
    for a, b in zip(fn.coefs_ + fn.intercepts_, sk.coefs_ + sk.intercepts_):
        assert a.dtype == b.dtype == np.float32
        assert _max_rel(a, b) < 1e-4
    np.testing.assert_allclose(fn.loss_curve_, sk.loss_curve_, rtol=1e-4)


def test_dtype_parameter():
    X, y = _X(), _targets("binary")
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, dtype="float32").fit(X, y)
    assert clf.network_.dtype == np.float32 and clf.predict_proba(X).dtype == np.float32
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, dtype="float64")
    clf.fit(X.astype(np.float32), y)
    assert clf.network_.dtype == np.float64
    # the network keeps its dtype when later calls bring another one
    clf.set_params(warm_start=True).fit(X.astype(np.float32), y)
    assert clf.network_.dtype == np.float64
    with pytest.raises(ValueError, match="'dtype' parameter of MLPClassifier"):
        MLPClassifier(dtype="int32").fit(X, y)


def test_sparse_input_is_densified():
    sp = pytest.importorskip("scipy.sparse")
    X, y = _X(), _targets("multiclass")
    X[np.abs(X) < 1] = 0
    dense = MLPClassifier(hidden_layer_sizes=(5,), max_iter=4, random_state=0).fit(X, y)
    sparse = MLPClassifier(hidden_layer_sizes=(5,), max_iter=4, random_state=0).fit(sp.csr_matrix(X), y)
    assert_same_model(sparse, dense, rtol=0)
    np.testing.assert_array_equal(sparse.predict_proba(sp.csc_matrix(X)), dense.predict_proba(X))


def test_predict_outputs():
    X = _X()
    for kind, shape in [("multiclass", (103, 3)), ("binary", (103, 2)), ("multilabel", (103, 3))]:
        y = _targets(kind)
        clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(X, y)
        P = clf.predict_proba(X)
        assert P.shape == shape
        np.testing.assert_allclose(clf.predict_log_proba(X), np.log(P))
        pred = clf.predict(X)
        assert pred.shape == np.shape(y)
        if kind != "multilabel":
            np.testing.assert_array_equal(pred, clf.classes_[np.argmax(P, axis=1)])
            np.testing.assert_allclose(P.sum(axis=1), 1)
    assert clf.out_activation_ == "logistic"
    reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=5).fit(X, _targets("multioutput"))
    assert reg.predict(X).shape == (103, 3) and reg.out_activation_ == "identity"


def test_errors():
    X, y = _X(), _targets("multiclass")
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        MLPClassifier().partial_fit(X, y)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=np.unique(y))
    with pytest.raises(ValueError, match="'alpha' parameter of MLPClassifier must be a float >= 0"):
        MLPClassifier(alpha=-1).fit(X, y)
    with pytest.raises(ValueError, match="'hidden_layer_sizes' parameter"):
        MLPClassifier(hidden_layer_sizes=(3, 0)).fit(X, y)
    with pytest.raises(ValueError, match="'solver' parameter"):
        MLPClassifier(solver="cg").fit(X, y)
    with pytest.raises(ValueError, match="'momentum' parameter"):
        MLPClassifier(solver="sgd", momentum=1.0).fit(X, y)
    with pytest.raises(ValueError, match="'poisson'"):
        MLPRegressor(loss="poisson").fit(X, np.abs(_targets("regression")))
    with pytest.raises(ValueError, match="validation set is too small"):
        MLPClassifier(early_stopping=True, validation_fraction=0.01).fit(X[:20], y[:20])
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        MLPRegressor(solver="sgd", learning_rate_init=10.0, max_iter=50).fit(X * 1e3, y=X[:, 0] * 1e6)
    clf = MLPClassifier(max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="warm_start can only be used"):
        clf.set_params(warm_start=True).fit(X[y != "emu"], y[y != "emu"])
    with pytest.raises(ValueError, match="X has 6 features"):
        clf.predict(X[:, :6])


# --------------------------------------------------------------------------- NaN and inf in X
# fit with sgd or adam finds them in its first epoch (no pass of its own over X)

def _snapshot(est):
    """What a failed fit must leave as it was: the fitted attributes and, through a refit,
    the optimizer's state."""
    return {"coefs": [W.copy() for W in est.coefs_],
            "intercepts": [b.copy() for b in est.intercepts_], "n_iter_": est.n_iter_, "t_": est.t_, "loss_": est.loss_,
            "loss_curve_": list(est.loss_curve_), "best_loss_": est.best_loss_}


def _assert_snapshot(est, snap):
    for a, b in zip(est.coefs_, snap["coefs"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(est.intercepts_, snap["intercepts"]):
        np.testing.assert_array_equal(a, b)
    for name in ("n_iter_", "t_", "loss_", "loss_curve_", "best_loss_"):
        assert getattr(est, name) == snap[name], name


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "identity"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fit_finds_nan_and_inf_in_its_first_epoch(kind, solver, activation, bad):
    """A NaN or inf anywhere in X: fit raises scikit-learn's ValueError naming its first place
    and leaves a new estimator unfitted, the random generator it was given untouched."""
    X, y = _X(), _targets(kind)
    rng = np.random.default_rng(hash((kind, solver, activation, str(bad))) % 2**32)
    for row, col in ((int(rng.integers(103)), int(rng.integers(7))), (102, 6)):
        Xb = X.copy()
        Xb[row, col] = bad
        Xb[row + 1:, :][Xb[row + 1:, :] > 2.5] = -bad  # later ones are not the first
        state = np.random.RandomState(3)
        est = _pair(kind, solver=solver, activation=activation, max_iter=3,
                    random_state=state)[0]
        what = "NaN" if np.isnan(bad) else "infinity or a value too large"
        with pytest.raises(ValueError,
                           match=rf"Input X contains {what}.*first at row {row}, column {col}"):
            est.fit(Xb, y)
        assert not hasattr(est, "coefs_") and "_net" not in est.__dict__
        np.testing.assert_array_equal(state.get_state()[1], np.random.RandomState(3).get_state()[1])
        with pytest.raises(sklearn.exceptions.NotFittedError):
            est.predict(X)


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_failed_fit_leaves_a_fitted_estimator_as_it_was(kind, warm_start, early_stopping):
    """A fitted estimator whose next fit meets a NaN (in a training row, or in a validation
    row of early stopping, which no step reads) keeps its parameters, its bookkeeping and its
    optimizer's state: refitted on clean data it follows the same trajectory as a copy that
    never met the NaN."""
    X, y = _X(), _targets(kind)
    params = dict(solver="adam", max_iter=2, random_state=0, warm_start=warm_start,
                  early_stopping=early_stopping)
    est = _pair(kind, **params)[0].fit(X, y)
    twin = copy.deepcopy(est)
    snap = _snapshot(est)
    for row in range(103) if early_stopping else range(0, 103, 17):  # validation rows too
        Xb = X.copy()
        Xb[row, 3] = np.nan
        msg = rf"Input X contains NaN \(first at row {row}, column 3\)"
        with pytest.raises(ValueError, match=msg):
            est.fit(Xb, y)
        _assert_snapshot(est, snap)
    if not warm_start:
        # a refit on other data (other features, other classes) keeps the old model whole
        X2, y2 = _X(n=60, d=5, seed=1), _targets(kind, n=60, seed=1)
        if kind == "multiclass":
            y2 = np.where(y2 == "emu", "yak", y2)
        X2[7, 1] = np.inf
        pred = est.predict(X)
        with pytest.raises(ValueError, match=r"Input X contains infinity.*row 7, column 1"):
            est.fit(X2, y2)
        _assert_snapshot(est, snap)
        assert est.n_features_in_ == 7
        if kind == "multiclass":
            np.testing.assert_array_equal(est.classes_, ["cat", "dog", "emu"])
        np.testing.assert_array_equal(est.predict(X), pred)
    est.fit(X, y)
    twin.fit(X, y)
    _assert_snapshot(est, _snapshot(twin))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sparse", [False, True])
def test_fit_finds_nan_in_float32_and_sparse_input(dtype, sparse):
    """The first epoch's scan also covers float32 input (fitted in float32) and sparse input
    (densified first)."""
    import scipy.sparse
    X, y = _X(dtype=dtype), _targets("multiclass")
    X[np.abs(X) < 0.5] = 0
    X[40, 5] = np.nan
    Xin = scipy.sparse.csr_matrix(X) if sparse else X
    est = MLPClassifier(max_iter=2, random_state=0)
    with pytest.raises(ValueError, match=r"Input X contains NaN \(first at row 40, column 5\)"):
        est.fit(Xin, y)
    assert "_net" not in est.__dict__
    X[40, 5] = 1.0
    est.fit(scipy.sparse.csr_matrix(X) if sparse else X, y)
    assert est.coefs_[0].dtype == dtype


def test_partial_fit_and_lbfgs_check_x_first():
    """partial_fit and lbfgs keep scikit-learn's scan of X before anything else."""
    X, y = _X(), _targets("multiclass")
    Xb = X.copy()
    Xb[5, 2] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        MLPClassifier(solver="lbfgs").fit(Xb, y)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        MLPClassifier().partial_fit(Xb, y, classes=np.unique(y))


# --------------------------------------------------------------------------- scikit-learn's machinery

def test_pickle_clone_and_deepcopy_keep_the_optimizer_state():
    X, y = _X(), _targets("multiclass")
    for solver in ("adam", "sgd"):
        a = MLPClassifier(hidden_layer_sizes=(6,), solver=solver, random_state=0, batch_size=30)
        a.partial_fit(X, y, classes=np.unique(y))
        b = pickle.loads(pickle.dumps(a))
        c = copy.deepcopy(a)
        np.testing.assert_array_equal(b.predict_proba(X), a.predict_proba(X))
        for est in (a, b, c):
            est.partial_fit(X, y)
        for est in (b, c):
            for p, q in zip(est.coefs_ + est.intercepts_, a.coefs_ + a.intercepts_):
                np.testing.assert_array_equal(p, q)
            assert est.network_ is not a.network_
        d = clone(a)
        assert d.get_params() == a.get_params() and not hasattr(d, "coefs_")


def test_pipeline_gridsearch_cross_val_score():
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(10,), solver="lbfgs",
                                                         max_iter=300, random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.9
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1.0],
                               "mlpclassifier__solver": ["lbfgs", "adam"]}, cv=3, n_jobs=2)
    grid.fit(X, y)
    assert grid.best_score_ > 0.9
    assert isinstance(grid.best_estimator_[-1], MLPClassifier)
    reg = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(10,), solver="lbfgs",
                                                       max_iter=500, random_state=0))
    cv = KFold(3, shuffle=True, random_state=0)
    assert cross_val_score(reg, X[:, :3], X[:, 3], cv=cv).mean() > 0.8


def test_importing_fastnn_does_not_need_sklearn(tmp_path):
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import fastnn\n"
            "try:\n    import fastnn.sklearn\nexcept ImportError as e:\n    print('ERR', e)\n")
    # run away from the repository root, whose source tree would shadow the installed package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert "ERR fastnn.sklearn needs scikit-learn" in out.stdout
    assert "fastnn[sklearn]" in out.stdout


# --------------------------------------------------------------------------- real data

@pytest.mark.slow
def test_fashion_mnist_accuracy_matches_the_published_figure():
    """scikit-learn's benchmark (zalandoresearch/fashion-mnist) lists MLPClassifier with
    activation='relu', hidden_layer_sizes=[100] at 0.877 test accuracy. Default settings
    (adam, batch 200, alpha 1e-4); max_iter is capped to keep the test short (the default run
    stops by tol at a similar accuracy)."""
    from fastnn.datasets import load_fashion_mnist
    try:
        (X, y), (Xt, yt) = load_fashion_mnist()
    except FileNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    clf = MLPClassifier(hidden_layer_sizes=(100,), random_state=0, max_iter=30).fit(X, y)
    acc = clf.score(Xt, yt)
    assert 0.865 <= acc <= 0.905, acc


def test_switching_solver_with_warm_start_and_lbfgs_verbose(capsys):
    X, y = _X(), _targets("multiclass")
    clf = MLPClassifier(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=5, random_state=0,
                        verbose=True).fit(X, y)
    assert "Iteration 5, loss = " in capsys.readouterr().out
    clf.set_params(solver="sgd", warm_start=True, verbose=False, max_iter=3).fit(X, y)
    assert len(clf.loss_curve_) == 3 and clf.n_iter_ == 3
    clf.set_params(solver="adam", n_iter_no_change=np.inf, tol=1.0, max_iter=4).fit(X, y)
    assert clf.n_iter_ == 4 and len(clf.loss_curve_) == 7
