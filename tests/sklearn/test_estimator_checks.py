"""scikit-learn's own estimator checks on KFClassifier and KFRegressor (fast settings)."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from kernelflow.sklearn import KFClassifier, KFRegressor

# Fast settings: a small MLP and a high learning rate, so every check's fits take milliseconds.
FAST = dict(hidden_layers=(32,), learning_rate=0.02, epochs=30, batch_size=32, random_state=0)


@parametrize_with_checks([KFClassifier(**FAST), KFRegressor(**FAST)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
