"""KFClassifier / KFRegressor behaviour beyond sklearn's checks: labels, routing, pickling, graph
lifetime, and model selection on digits in-process and against a real `kernelflow serve`."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest
from joblib import parallel_backend
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import kernelflow as kf
from kernelflow.errors import InvalidArgumentError
from kernelflow.sklearn import KFClassifier, KFRegressor, _runtime


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return train_test_split(d.data / 16.0, d.target, test_size=0.3, random_state=0, stratify=d.target)


def build_mlp(n_features_in, n_outputs, units=16, rt=None):
    """A model function for the model__ routing tests: returns the layers."""
    return [kf.nn.Dense(units, activation="relu", name="h"), kf.nn.Dense(n_outputs, activation="softmax", name="out")]


def _graph_names():
    return set(_runtime(None).graphs())


def test_classifier_predict_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError):
        KFClassifier().predict(np.zeros((2, 3)))


def test_classifier_string_labels_round_trip(digits):
    X_train, X_test, y_train, y_test = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    clf = KFClassifier(epochs=8, learning_rate=0.01, random_state=0).fit(X_train, names[y_train])
    assert list(clf.classes_) == sorted(names)
    assert clf.n_features_in_ == 64
    pred = clf.predict(X_test)
    assert pred.dtype.kind == "U" and set(pred) <= set(names)
    assert np.mean(pred == names[y_test]) > 0.9
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_model_function_params_are_routed_and_visible(digits):
    X_train, _, y_train, _ = digits
    clf = KFClassifier(model=build_mlp, model__units=8, epochs=2, random_state=0)
    assert clf.get_params()["model__units"] == 8
    clf.set_params(model__units=12)
    clf.fit(X_train[:200], y_train[:200])
    assert clf._kf_model.graph["h/kernel"].shape == (64, 12)
    assert "model__units=12" in repr(clf)


def test_unknown_argument_fails_at_fit_naming_it(digits):
    X_train, _, y_train, _ = digits
    clf = KFClassifier(epochs=1, widht=3)
    with pytest.raises(InvalidArgumentError, match="widht"):
        clf.fit(X_train[:50], y_train[:50])


def test_refit_and_garbage_collection_delete_the_graph(digits):
    X_train, _, y_train, _ = digits
    clf = KFClassifier(epochs=1, random_state=0).fit(X_train[:100], y_train[:100])
    first = clf._kf_model.graph.name
    assert first in _graph_names()
    clf.fit(X_train[:100], y_train[:100])
    second = clf._kf_model.graph.name
    assert first not in _graph_names() and second in _graph_names()
    del clf
    gc.collect()
    assert second not in _graph_names()


def test_pickled_fitted_estimator_predicts_the_same(digits):
    X_train, X_test, y_train, _ = digits
    clf = KFClassifier(epochs=3, random_state=0).fit(X_train, y_train)
    clone = pickle.loads(pickle.dumps(clf))  # noqa: S301 - sklearn pickles estimators; our own bytes
    np.testing.assert_allclose(clone.predict_proba(X_test), clf.predict_proba(X_test), rtol=1e-6, atol=1e-7)
    assert clone._kf_model.graph.name != clf._kf_model.graph.name  # its own graph


def test_regressor_multi_output_shape_and_fit():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    Y = np.stack([X @ rng.normal(size=5), X[:, 0] - 2 * X[:, 1]], axis=1)
    reg = KFRegressor(epochs=40, learning_rate=0.01, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (300, 2) and reg.predict(X).dtype == np.float64
    assert reg.score(X, Y) > 0.9


def test_grid_search_and_cross_val_score_on_digits(digits):
    X_train, X_test, y_train, y_test = digits
    search = GridSearchCV(KFClassifier(epochs=6, random_state=0),
                          {"hidden_layers": [(16,), (64,)], "learning_rate": [1e-3, 1e-2]}, cv=2)
    search.fit(X_train, y_train)
    assert search.best_params_ == {"hidden_layers": (64,), "learning_rate": 1e-2}
    assert search.score(X_test, y_test) > 0.9
    pipe = make_pipeline(StandardScaler(), KFClassifier(epochs=6, learning_rate=1e-2, random_state=0))
    scores = cross_val_score(pipe, X_train, y_train, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def _most_at_once(jobs) -> int:
    """The most jobs running at one time, from their started/finished times on the server."""
    events = sorted([(j["started"], 1) for j in jobs] + [(j["finished"], -1) for j in jobs])  # ends first on ties
    running = most = 0
    for _, d in events:
        running += d
        most = max(most, running)
    return most


def test_grid_search_on_a_real_server_runs_server_jobs(server, digits):
    X_train, X_test, y_train, y_test = digits
    url = f"{server.url}?token={server.token}"
    rt = kf.connect(url)
    before = {j["id"] for j in rt.jobs()}
    search = GridSearchCV(KFClassifier(epochs=5, learning_rate=1e-2, random_state=0, runtime=url),
                          {"hidden_layers": [(16,), (48,)]}, cv=2, n_jobs=2)
    with parallel_backend("threading"):  # two fits at a time as server jobs, without spawning processes
        search.fit(X_train, y_train)
    assert search.score(X_test, y_test) > 0.9
    new = [j for j in rt.jobs() if j["id"] not in before]
    assert len(new) == 5  # 2 params x 2 folds + the refit, each a job on the server
    assert _most_at_once(new) == 2  # n_jobs=2: two fits trained at the same time on the server
    scores = cross_val_score(KFClassifier(epochs=5, learning_rate=1e-2, random_state=0, runtime=url),
                             X_train[:600], y_train[:600], cv=2)
    assert scores.min() > 0.85
    rt.close()
