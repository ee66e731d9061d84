"""scikit-learn estimators over kernelflow models: `KFClassifier` and `KFRegressor`.

Each fit builds a model in its own graph on a runtime (by default an in-process one shared by
the estimators of this process; or a runtime URL, so a ``GridSearchCV`` on a laptop trains on
a GPU server, ``n_jobs`` fits at a time as concurrent server jobs) and trains it there as a
job. Refitting, or garbage-collecting the estimator, deletes the graph and its datasets.

The model is either an MLP made from ``hidden_layers`` (ints: Dense widths with
``activation``; or ``kf.nn`` layer objects), with the output layer sized from ``y`` (softmax
over ``classes_``, or linear with ``y``'s width), or whatever a ``model`` function builds:
``model(n_features_in=..., n_outputs=..., **model__params)`` returning a list of layers or
a kf model (give the function an ``rt`` parameter to receive the estimator's runtime).
``model__<name>=value`` keyword arguments are hyper-parameters like the others
(``get_params``, ``set_params``, grid search), as skorch routes ``module__``.

A pickled fitted estimator carries its weights as arrays (not a runtime handle): unpickled,
it rebuilds its model on its runtime at the first predict.

Contents: KFClassifier, KFRegressor.
"""

from __future__ import annotations

import atexit
import copy
import inspect
import threading
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .errors import InvalidArgumentError
from .nn.core import Dense
from .nn.layer_base import Layer
from .nn.models import Model, Sequential

__all__ = ["KFClassifier", "KFRegressor"]

_RUNTIMES: dict[str, Any] = {}
_RUNTIMES_LOCK = threading.Lock()


def _runtime(spec: Any) -> Any:
    """The runtime for ``spec``: None (this process's in-process runtime), a URL, or a Runtime."""
    if spec is not None and not isinstance(spec, str):
        return spec
    key = spec or "inproc"
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            from .client import connect

            rt = _RUNTIMES[key] = connect(key)
            atexit.register(_close_quietly, rt)  # stop its job threads before the interpreter tears down
        return rt


def _close_quietly(rt: Any) -> None:
    try:
        rt.close()
    except Exception:  # noqa: BLE001 - a server already gone at exit
        pass


class _KFBase(BaseEstimator):
    """What the classifier and the regressor share: parameters, model building, fit, pickling."""

    _loss = "mse"
    _out_activation: str | None = None

    def __init__(self, hidden_layers: Any = (64,), activation: str = "relu", model: Any = None,
                 optimizer: str = "adam", learning_rate: float = 1e-3, batch_size: int = 32, epochs: int = 50,
                 random_state: Any = None, runtime: Any = None, verbose: int = 0, **kwargs: Any):
        self.hidden_layers = hidden_layers
        self.activation = activation
        self.model = model
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.random_state = random_state
        self.runtime = runtime
        self.verbose = verbose
        # sklearn wants __init__ never to raise: a stray argument fails at fit
        self._unknown_args = sorted(k for k in kwargs if not k.startswith("model__"))
        for k, v in kwargs.items():
            if k.startswith("model__"):
                setattr(self, k, v)

    # ----------------------------------------------------------------- parameters (skorch-style routing)
    def _model_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k.startswith("model__")}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep=deep)
        params.update(self._model_params())
        return params

    def set_params(self, **params: Any) -> _KFBase:
        routed = {k: v for k, v in params.items() if k.startswith("model__")}
        for k, v in routed.items():
            setattr(self, k, v)
        valid = set(self._get_param_names())
        rest = {k: v for k, v in params.items() if k not in routed and k.partition("__")[0] in valid}
        stray = sorted(k for k in params if k not in routed and k not in rest)
        if stray:  # sklearn wants set_params never to raise: a stray argument fails at fit
            self._unknown_args = sorted(set(getattr(self, "_unknown_args", [])) | set(stray))
        if rest:
            super().set_params(**rest)
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    # ----------------------------------------------------------------- building
    def _layers(self, n_outputs: int) -> list[Layer]:
        hidden = self.hidden_layers
        if isinstance(hidden, (int, np.integer)):
            hidden = (hidden,)
        out: list[Layer] = []
        for i, h in enumerate(hidden or ()):
            if isinstance(h, Layer):
                out.append(copy.deepcopy(h))  # an unbuilt copy: the parameter itself never changes
            elif isinstance(h, (int, np.integer)) and h >= 1:
                out.append(Dense(int(h), activation=self.activation, name=f"hidden_{i}"))
            else:
                raise InvalidArgumentError(f"{type(self).__name__}: hidden_layers entries must be positive ints or "
                                           f"kf.nn layers; got {h!r}")
        out.append(Dense(n_outputs, activation=self._out_activation, name="output"))
        return out

    def _build(self, n_features: int, n_outputs: int, seed: int) -> Model:
        rt = _runtime(self.runtime)
        params = {k[len("model__"):]: v for k, v in self._model_params().items()}
        if self.model is None:
            if params:
                raise InvalidArgumentError(f"{type(self).__name__}: model__ parameters {sorted(params)} need a model "
                                           "function (model=...)")
            built: Any = self._layers(n_outputs)
        else:
            if not callable(self.model):
                raise InvalidArgumentError(f"{type(self).__name__}: model must be a function building the model; got "
                                           f"{self.model!r}")
            kw = dict(params, n_features_in=n_features, n_outputs=n_outputs)
            sig = inspect.signature(self.model).parameters
            if "rt" in sig:
                kw["rt"] = rt
            built = self.model(**kw)
        if isinstance(built, (list, tuple)):
            m: Model = Sequential(list(built), rt=rt, seed=seed)
            m.build((n_features,))
        elif isinstance(built, Model):
            m = built
        else:
            raise InvalidArgumentError(f"{type(self).__name__}: the model function must return a list of layers or a "
                                       f"kf model; got {type(built).__name__}")
        if not m.compiled:
            from .nn.models import OPTIMIZERS, get_optimizer

            opt = self.optimizer
            if isinstance(opt, str) and opt.lower() in OPTIMIZERS:
                opt = OPTIMIZERS[opt.lower()][0](lr=float(self.learning_rate))
            m.compile(get_optimizer(opt), self._loss)
            if isinstance(m, Sequential):
                m._ensure_built_spec()
        return m

    def _fit_model(self, X: np.ndarray, y: np.ndarray, n_outputs: int) -> None:
        if getattr(self, "_unknown_args", None):
            raise InvalidArgumentError(f"{type(self).__name__}: unexpected argument(s) {self._unknown_args}; extra "
                                       "arguments go to the model function as model__<name>")
        self._drop_model()
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        m = self._build(X.shape[1], n_outputs, seed)
        self._kf_model = m
        m.fit(X.astype(np.float32), y, batch_size=int(self.batch_size), epochs=int(self.epochs), seed=seed,
              verbose=self.verbose, wait=True, checkpoint_every_s=None, log_every=0)
        self.n_outputs_ = n_outputs

    def _model_for_predict(self) -> Model:
        m = getattr(self, "_kf_model", None)
        if m is None:  # unpickled: rebuild on this process's runtime from the saved weights
            m = self._build(self.n_features_in_, self.n_outputs_, 0)
            m.set_weights(self._saved_weights)
            self._kf_model = m
        return m

    def _drop_model(self) -> None:
        m = self.__dict__.pop("_kf_model", None)
        if m is not None:
            try:
                m.delete()
            except Exception:  # noqa: BLE001 - the runtime may be gone already (interpreter exit)
                pass

    def __del__(self) -> None:
        self._drop_model()

    def _predict_raw(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(self._model_for_predict().predict(X.astype(np.float32)), dtype=np.float64)

    # ----------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state = dict(state)
        m = state.pop("_kf_model", None)
        if m is not None:
            state["_saved_weights"] = m.get_weights()
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)


class KFClassifier(ClassifierMixin, _KFBase):
    """A scikit-learn classifier training a kernelflow model (softmax output, cross-entropy).

    Args:
        hidden_layers: widths of the hidden Dense layers (or kf.nn layer objects).
        activation: activation of the hidden Dense layers.
        model: a function building the model instead (see the module docstring).
        optimizer: a Keras optimiser name or a kf.optim optimiser.
        learning_rate: the optimiser's learning rate (with a name).
        batch_size: rows per step.
        epochs: passes over the data.
        random_state: seed of the initial weights and the shuffles (None: fresh each fit).
        runtime: None (in-process), a runtime URL (``"kf://host:port?token=..."``) or a Runtime.
        verbose: 1 prints a line per epoch.
        **kwargs: ``model__<name>`` arguments of ``model``.

    Attributes:
        classes_: the class labels.
        n_features_in_: features seen by fit.

    Example:
        >>> from sklearn.model_selection import GridSearchCV
        >>> GridSearchCV(KFClassifier(epochs=20), {"hidden_layers": [(32,), (64,)]}).fit(X, y)
    """

    _loss = "sparse_categorical_crossentropy"
    _out_activation = "softmax"

    def fit(self, X: Any, y: Any) -> KFClassifier:
        """Train on ``X`` (n_samples, n_features) and labels ``y`` (ints or strings); returns self."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        enc = LabelEncoder().fit(y)
        self.classes_ = enc.classes_
        self._fit_model(X, enc.transform(y).astype(np.int64), len(self.classes_))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, (n_samples, n_classes) float64, columns in ``classes_`` order."""
        p = self._predict_raw(X)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        p = self._predict_raw(X)
        return self.classes_[np.argmax(p, axis=1)]


class KFRegressor(RegressorMixin, _KFBase):
    """A scikit-learn regressor training a kernelflow model (linear output, mean squared error).

    Args: as `KFClassifier`. ``y`` may be (n_samples,) or (n_samples, n_targets).

    Attributes:
        n_features_in_: features seen by fit.
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.regressor_tags.poor_score = False
        return tags

    def fit(self, X: Any, y: Any) -> KFRegressor:
        """Train on ``X`` (n_samples, n_features) and targets ``y``; returns self."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True, multi_output=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        y2 = y.reshape(len(y), -1)
        self._fit_model(X, y2.astype(np.float32), y2.shape[1])
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets, float64, shaped like the ``y`` fit saw."""
        out = self._predict_raw(X)
        return out[:, 0] if self._y_ndim == 1 else out
