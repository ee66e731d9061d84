"""The multi-variable update kernel: bitwise the members' own kernels, near a float64 reference, its
fallbacks, and the CUDA source (its text, and its semantics run as C++ on the CPU)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler import multi_update as MU
from kernelflow.compiler.cupy_backend import UPDATE_OPTIONS, update_launch, update_source
from kernelflow.compiler.pipeline import Compiler
from kernelflow.compiler.updates import group_updates
from kernelflow.errors import InvalidArgumentError
from kernelflow.graph.ops import training as T
from kernelflow.kernels.registry import get_kernel

from .conftest import plan_of

pytest.importorskip("numba")

SHAPES = [(37, 5), (300,), (2, 3, 4), (1,), (4096, 9)]

OPTIMISERS = {  # name -> (op builder, slots, scalar values, attrs)
    "sgd": (kf.apply_gradient_descent, 0, (0.05,), {}),
    "sgd_wd": (kf.apply_gradient_descent, 0, (0.05,), {"weight_decay": 0.01}),
    "momentum": (kf.apply_momentum, 1, (0.05,), {"momentum": 0.9}),
    "nesterov_wd": (kf.apply_momentum, 1, (0.05,), {"momentum": 0.9, "nesterov": True, "weight_decay": 0.003}),
    "adam": (kf.apply_adam, 2, (0.01,), {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7}),
    "adamw": (kf.apply_adamw, 2, (0.01, 0.02, 3e-7), {"weight_decay": 0.01}),
    "adamw_nowd": (kf.apply_adamw, 2, (0.01, 0.02, 3e-7), {"weight_decay": 0.0}),
    "rmsprop": (kf.apply_rmsprop, 2, (0.01,), {"rho": 0.9}),
    "rmsprop_mom": (kf.apply_rmsprop, 2, (0.01,), {"rho": 0.8, "momentum": 0.9, "epsilon": 1e-6}),
    "centered_mom": (kf.apply_centered_rmsprop, 3, (0.01,), {"rho": 0.9, "momentum": 0.5}),
    "adagrad": (kf.apply_adagrad, 1, (0.1,), {"epsilon": 1e-6}),
}
NONNEG = {T.apply_adam_op: 2, T.apply_adamw_op: 2, T.apply_rmsprop_op: 1, T.apply_centered_rmsprop_op: 2,
          T.apply_adagrad_op: 1}
"""The slot that holds a mean square (non-negative) of each op."""


class Store:
    """The variable storage a kernel's context reads (the executor's session keeps it by name)."""

    def __init__(self, node, values):
        self.node = node
        self.values = values

    def storage(self, var):
        return self.values[var.name]


def _build(graph, name, dtype, shapes=SHAPES):
    """(group node, feeds' placeholders in order): one update per shape, grads and scalars fed."""
    make, n_slots, scalars, attrs = OPTIMISERS[name]
    grads, updates = [], []
    lrs = [graph.placeholder((), dtype, name=f"s{j}") for j in range(len(scalars))]
    for i, shape in enumerate(shapes):
        v = graph.variable(np.zeros(shape, dtype), name=f"w{i}")
        slots = [graph.variable(np.zeros(shape, dtype), name=f"w{i}_slot{j}") for j in range(n_slots)]
        gr = graph.placeholder(shape, dtype, name=f"g{i}")
        grads.append(gr)
        updates.append(make(v, *slots, gr, *lrs, **attrs, name=f"update_w{i}"))
    train = kf.group(updates, name="train")
    order, fed = plan_of([train], grads + lrs)
    new_order, members_of, made = group_updates(order, fed, [train], lambda n: True)
    assert len(made) == 1 and len(made[0].op.group.members) == len(shapes)
    return made[0], scalars


def _state(node, rng, dtype):
    """Random storage (slots of Adam's second moment non-negative) and gradients of a group node."""
    grp = node.op.group
    values, grads = {}, []
    for m in grp.members:
        for j in range(grp.n_state):
            a = rng.standard_normal(m.inputs[j].shape)
            if j == NONNEG.get(m.op):
                a = np.abs(a) + (0.5 if m.op is T.apply_centered_rmsprop_op else 0)
            elif j == 1 and m.op is T.apply_centered_rmsprop_op:
                a = a * 0.1  # the mean gradient: its square stays below the mean square
            values[m.inputs[j].name] = a.astype(dtype)
        grads.append(rng.standard_normal(m.inputs[0].shape).astype(dtype) * 3)
    return values, grads


def _inputs(node, grads, scalars, values, dtype):
    grp = node.op.group
    ins = []
    for m, gr in zip(grp.members, grads):
        ins += [values[m.inputs[j].name] for j in range(grp.n_state)] + [gr]
    return ins + [np.asarray(s, dtype) for s in scalars]


def _own(node, values, grads, scalars, dtype):
    """Each member through its registered numpy kernel (today's per-variable path)."""
    grp = node.op.group
    for m, gr in zip(grp.members, grads):
        ins = [values[m.inputs[j].name] for j in range(grp.n_state)] + [gr] + [np.asarray(s, dtype) for s in scalars]
        get_kernel(m.op, "numpy").fn(Store(m, values), np, *ins, **m.attrs)


def _ref64(name, values, grads, scalars, node):
    """The update in float64, from the same starting values."""
    _, _, _, attrs = OPTIMISERS[name]
    grp = node.op.group
    out = {}
    for m, gr in zip(grp.members, grads):
        st = [values[m.inputs[j].name].astype(np.float64) for j in range(grp.n_state)]
        g = gr.astype(np.float64)
        var = st[0]
        if m.op is T.apply_gradient_descent_op:
            var = var - scalars[0] * (g + attrs.get("weight_decay", 0.0) * var)
        elif m.op is T.apply_momentum_op:
            g = g + attrs.get("weight_decay", 0.0) * var
            acc = attrs["momentum"] * st[1] + g
            step = g + attrs["momentum"] * acc if attrs.get("nesterov") else acc
            var = var - scalars[0] * step
            st[1] = acc
        elif m.op is T.apply_adagrad_op:
            st[1] = st[1] + g * g
            var = var - scalars[0] * g / (np.sqrt(st[1]) + attrs["epsilon"])
        elif m.op in (T.apply_rmsprop_op, T.apply_centered_rmsprop_op):
            rho, mo, eps = m.attrs["rho"], m.attrs["momentum"], m.attrs["epsilon"]
            c = m.op is T.apply_centered_rmsprop_op
            ms = rho * st[1 + c] + (1 - rho) * g * g
            denom = ms
            if c:
                st[1] = rho * st[1] + (1 - rho) * g
                denom = ms - st[1] ** 2
            step = scalars[0] * g / np.sqrt(denom + eps)
            if mo:
                st[2 + c] = mo * st[2 + c] + step
                step = st[2 + c]
            var = var - step
            st[1 + c] = ms
        else:
            b1, b2 = m.attrs["beta1"], m.attrs["beta2"]
            if m.op is T.apply_adamw_op:
                lr, lr_t, eps = scalars
                var = var * (1 - lr * attrs["weight_decay"])
            else:
                lr_t, eps = scalars[0], m.attrs["epsilon"]
            st[1] = b1 * st[1] + (1 - b1) * g
            st[2] = b2 * st[2] + (1 - b2) * g * g
            var = var - lr_t * st[1] / (np.sqrt(st[2]) + eps)
        st[0] = var
        for j, a in enumerate(st):
            out[m.inputs[j].name] = a
    return out


@pytest.fixture(scope="module")
def compiler(tmp_path_factory):
    return Compiler(mode="sync", cache_dir=str(tmp_path_factory.mktemp("mu")), threads=1)


@pytest.fixture(scope="module")
def compiler_par(tmp_path_factory):
    return Compiler(mode="sync", cache_dir=str(tmp_path_factory.mktemp("mup")), threads=2)


def _launches(monkeypatch):
    calls = []
    orig = MU.CpuUpdateGroup.launch

    def launch(self, t, cols, scalars):
        ok = orig(self, t, cols, scalars)
        calls.append((ok, len(cols[0])))
        return ok

    monkeypatch.setattr(MU.CpuUpdateGroup, "launch", launch)
    return calls


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMISERS))
@pytest.mark.parametrize("par", [False, True], ids=["serial", "parallel"])
def test_group_kernel_is_bitwise_the_members_kernels_and_near_float64(graph, rng, compiler, compiler_par, monkeypatch,
                                                                      name, dtype, par):
    node, scalars = _build(graph, name, dtype)
    values, grads = _state(node, rng, dtype)
    start = {k: v.copy() for k, v in values.items()}
    own = {k: v.copy() for k, v in values.items()}
    entry = (compiler_par if par else compiler).kernel_for(node, "numpy")
    calls = _launches(monkeypatch)
    for step in range(3):  # several steps: slots carry over
        out = entry.fn(Store(node, values), np, *_inputs(node, grads, scalars, values, dtype))
        _own(node, own, grads, scalars, dtype)
        if step == 0:
            ref = _ref64(name, start, grads, scalars, node)
            tol = 2e-6 if dtype == "float32" else 1e-14
            for k, v in values.items():
                np.testing.assert_allclose(v, ref[k], rtol=tol, atol=tol, err_msg=k)
    assert calls and all(ok and n == len(SHAPES) for ok, n in calls)  # one kernel call for all members
    assert out is values[node.op.group.members[-1].inputs[0].name]
    for k, v in values.items():
        untouched = name == "rmsprop" and k.endswith("slot1")  # the momentum slot, without momentum
        assert np.array_equal(v, start[k]) == untouched, k
        np.testing.assert_array_equal(v, own[k], err_msg=k)


def test_work_items_split_members_evenly_over_threads(compiler_par, graph):
    node, _ = _build(graph, "adam", "float32")
    k = MU.CpuUpdateGroup(node.op.group, None, compiler_par.cache, threads=4)
    sizes = (1, 70_000, 30_000, 0)
    items = k.work(sizes, parallel=True)
    lens = items[:, 2] - items[:, 1]
    assert set(items[:, 0]) == {0, 1, 2}
    for i, n in enumerate(sizes):  # every element of every member exactly once
        rows = items[items[:, 0] == i]
        covered = np.zeros(n, int)
        for _, lo, hi in rows:
            covered[lo:hi] += 1
        assert (covered == 1).all()
    assert lens.max() <= max(MU.CHUNK_MIN, -(-sum(sizes) // 16))
    serial = k.work(sizes, parallel=False)
    assert serial.tolist() == [[0, 0, 1], [1, 0, 70_000], [2, 0, 30_000]]


def test_members_the_kernel_does_not_take_run_their_own_kernels(graph, rng, compiler, monkeypatch):
    node, scalars = _build(graph, "adam", "float32")
    values, grads = _state(node, rng, "float32")
    names = [m.inputs[0].name for m in node.op.group.members]
    values[names[0]] = np.asfortranarray(values[names[0]])  # non-contiguous storage
    grads[1] = grads[1][:1]  # a gradient of another shape (broadcast by the numpy kernel)
    grads[2] = np.swapaxes(rng.standard_normal((4, 3, 2)).astype("float32"), 0, 2)  # strided: copied, then taken
    assert grads[2].shape == (2, 3, 4) and not grads[2].flags.c_contiguous
    for k in list(values):  # member 3: float64 storage in a float32 group
        if k.startswith("w3"):
            values[k] = values[k].astype(np.float64)
    grads[3] = grads[3].astype(np.float64)
    own = {k: v.copy(order="K") for k, v in values.items()}
    calls = _launches(monkeypatch)
    compiler.kernel_for(node, "numpy").fn(Store(node, values), np, *_inputs(node, grads, scalars, values, "float32"))
    _own(node, own, grads, scalars, "float32")
    assert calls == [(True, 2)]  # members 2 and 4 in the kernel; 0, 1 and 3 on their own
    for k, v in values.items():
        np.testing.assert_array_equal(v, own[k], err_msg=k)
        assert v.dtype == own[k].dtype


def test_scalars_of_another_dtype_send_every_member_to_its_own_kernel(graph, rng, compiler, monkeypatch):
    node, scalars = _build(graph, "sgd", "float32")
    values, grads = _state(node, rng, "float32")
    own = {k: v.copy() for k, v in values.items()}
    calls = _launches(monkeypatch)
    ins = _inputs(node, grads, scalars, values, "float32")
    ins[-1] = np.asarray(scalars[0], np.float64)  # numpy computes lr * g in float64 then: so must we
    compiler.kernel_for(node, "numpy").fn(Store(node, values), np, *ins)
    for m, gr in zip(node.op.group.members, grads):
        own_ins = [own[m.inputs[0].name], gr, np.asarray(scalars[0], np.float64)]
        get_kernel(m.op, "numpy").fn(Store(m, own), np, *own_ins, **m.attrs)
    assert calls == []
    for k, v in values.items():
        np.testing.assert_array_equal(v, own[k], err_msg=k)


def test_read_only_gradients_go_in_one_call(graph, rng, compiler, monkeypatch):
    node, scalars = _build(graph, "momentum", "float32")
    values, grads = _state(node, rng, "float32")
    grads[0].flags.writeable = False  # as an array decoded from the wire
    own = {k: v.copy() for k, v in values.items()}
    calls = _launches(monkeypatch)
    compiler.kernel_for(node, "numpy").fn(Store(node, values), np, *_inputs(node, grads, scalars, values, "float32"))
    _own(node, own, grads, scalars, "float32")
    assert calls == [(True, len(SHAPES))]
    for k, v in values.items():
        np.testing.assert_array_equal(v, own[k], err_msg=k)


def test_a_failing_member_is_named_in_the_error(graph, rng, compiler):
    node, scalars = _build(graph, "sgd", "float32")
    values, grads = _state(node, rng, "float32")
    grads[2] = rng.standard_normal(7).astype("float32")  # (2, 3, 4) variable: not broadcastable
    with pytest.raises(InvalidArgumentError, match="update_w2") as e:
        compiler.kernel_for(node, "numpy").fn(Store(node, values), np,
                                              *_inputs(node, grads, scalars, values, "float32"))
    assert e.value.node == "update_w2"


# --------------------------------------------------------------------------- the CUDA source
def test_cuda_source_text(graph):
    node, _ = _build(graph, "adamw", "float32")
    f = MU.formula(node.op.group.op, node.op.group.attrs)
    src = update_source(f, "float32", "kf_update_apply_adamw_float32")
    assert src.startswith("typedef float T;\n")
    assert 'extern "C" __global__ void kf_update_apply_adamw_float32(const unsigned long long* ptrs, ' \
           "const long long* offsets, int n, T lr_t, T eps_t, T b1, T c1, T b2, T c2, T decay)" in src
    for j, a in enumerate(("var", "m", "v", "grad")):
        assert f"T* {a} = (T*)ptrs[(long long)lo * 4 + {j}];" in src
    assert "T xk = var[k] * decay;" in src and "var[k] = xk - (mk / (sqrt(vk) + eps_t)) * lr_t;" in src
    assert "double" not in src and "typedef double T;" in update_source(f, "float64", "x")
    assert UPDATE_OPTIONS == ("--fmad=false",)  # no contraction: each operation rounds as the ufuncs do
    offsets, blocks = update_launch([5, 0, 300])
    assert offsets.tolist() == [0, 5, 5, 305] and blocks == 2


_SHIM = """#include <cmath>
using std::sqrt;
struct KfDim { unsigned x; };
static KfDim blockIdx = {0}, blockDim = {1}, gridDim = {1}, threadIdx = {0};
#define __global__
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_cuda_source_run_as_cpp_is_bitwise_the_numpy_kernels(graph, rng, tmp_path, name):
    # One "thread" walks the grid-stride loop over every element: the generated text's arithmetic,
    # member lookup and pointer table, compiled by g++ without contraction (IEEE, as --fmad=false).
    dtype = "float32"
    node, scalars = _build(graph, name, dtype)
    grp = node.op.group
    f = MU.formula(grp.op, grp.attrs)
    (tmp_path / "k.cpp").write_text(_SHIM + update_source(f, dtype, "kf_k"))
    lib = tmp_path / "k.so"
    subprocess.run(["g++", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "k.cpp")],
                   check=True, capture_output=True)
    fn = ctypes.CDLL(str(lib)).kf_k
    values, grads = _state(node, rng, dtype)
    own = {k: v.copy() for k, v in values.items()}
    cols = [[values[m.inputs[j].name] for m in grp.members] for j in range(grp.n_state)] + [grads]
    ptrs = np.array([c[i].ctypes.data for i in range(len(grp.members)) for c in cols], np.uint64)
    offsets, _ = update_launch([g.size for g in grads])
    vals = MU.scalar_values(grp.op, grp.attrs, np.float32, [np.asarray(s, dtype) for s in scalars])
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int] + [ctypes.c_float] * len(vals)
    fn(ptrs.ctypes.data, offsets.ctypes.data, len(grp.members), *[float(v) for v in vals])
    _own(node, own, grads, scalars, dtype)
    for k, v in values.items():
        np.testing.assert_array_equal(v, own[k], err_msg=k)


def test_storage_replaced_between_calls_is_the_one_updated(graph, rng, compiler, monkeypatch):
    # A restore or write_variable puts a new array in the storage: the next call must update that one.
    node, scalars = _build(graph, "adam", "float32")
    values, grads = _state(node, rng, "float32")
    kernel = compiler.kernel_for(node, "numpy").fn
    calls = _launches(monkeypatch)
    kernel(Store(node, values), np, *_inputs(node, grads, scalars, values, "float32"))
    old = values["w1"]
    values["w1"] = rng.standard_normal(old.shape).astype("float32")
    values["w4"] = np.asfortranarray(values["w4"])  # and one the kernel no longer takes
    own = {k: v.copy(order="K") for k, v in values.items()}
    before = old.copy()
    kernel(Store(node, values), np, *_inputs(node, grads, scalars, values, "float32"))
    _own(node, own, grads, scalars, "float32")
    assert calls == [(True, 5), (True, 4)]
    np.testing.assert_array_equal(old, before)  # the replaced array is left alone
    for k, v in values.items():
        np.testing.assert_array_equal(v, own[k], err_msg=k)
