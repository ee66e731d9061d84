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
from kernelflow.compiler.cupy_backend import UPDATE_OPTIONS, update_constants, update_launch, update_source
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

    def launch(self, t, cols, scalars_in, memo):
        ok = orig(self, t, cols, scalars_in, memo)
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
def _cuda_source(node, dtype, name):
    grp = node.op.group
    f = MU.formula(grp.op, grp.attrs)
    return update_source(f, dtype, name, MU.input_scalars(grp.op, grp.attrs), grp.n_scalars)


def test_cuda_source_text(graph):
    node, _ = _build(graph, "adamw", "float32")
    src = _cuda_source(node, "float32", "kf_update_apply_adamw_float32")
    assert src.startswith("typedef float T;\n")
    assert 'extern "C" __global__ void kf_update_apply_adamw_float32(const unsigned long long* sptrs, ' \
           "const unsigned long long* gptrs, const long long* offsets, int n, const T* __restrict__ s0_p, " \
           "const T* __restrict__ s1_p, const T* __restrict__ s2_p, T b1, T c1, T b2, T c2, T wd)" in src
    # the learning rates are read on the device, never passed (or copied) through the host
    for line in ("const T s0 = *s0_p;", "const T lr_t = s1;", "const T eps_t = s2;", "const T decay = 1 - s0 * wd;"):
        assert line in src
    for j, a in enumerate(("var", "m", "v")):
        assert f"T* {a} = (T*)sptrs[(long long)lo * 3 + {j}];" in src
    assert "const T* grad = (const T*)gptrs[lo];" in src
    assert "T xk = var[k] * decay;" in src and "var[k] = xk - (mk / (sqrt(vk) + eps_t)) * lr_t;" in src
    assert "double" not in src and "typedef double T;" in _cuda_source(node, "float64", "x")
    assert UPDATE_OPTIONS == ("--fmad=false",)  # no contraction: each operation rounds as the ufuncs do
    offsets, blocks = update_launch([5, 0, 300])
    assert offsets.tolist() == [0, 5, 5, 305] and blocks == 2
    assert offsets.dtype == np.int64  # the kernel's const long long*


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_cuda_kernel_constants_are_the_numpy_kernels_scalars(graph, name):
    # by-value parameters (in the source's order) and the input expressions give scalar_values bitwise
    node, scalars = _build(graph, name, "float32")
    grp = node.op.group
    f = MU.formula(grp.op, grp.attrs)
    t = np.dtype("float32")
    inputs = MU.input_scalars(grp.op, grp.attrs)
    consts = update_constants(grp.op, grp.attrs, t, grp.n_scalars)
    assert all(type(c) is np.float32 for c in consts)  # the kernel's exact C type
    s = [np.asarray(v, t) for v in scalars]
    env = {f"s{j}": v[()] for j, v in enumerate(s)}
    by_value = [n for n in f.scalars if n not in inputs] + (["wd"] if "wd" in "".join(inputs.values()) else [])
    env.update(zip(by_value, consts))
    got = [eval(inputs[n], {}, env) if n in inputs else env[n] for n in f.scalars]  # noqa: S307 (our own text)
    want = MU.scalar_values(grp.op, grp.attrs, np.float32, s)
    assert [np.float32(v).tobytes() for v in got] == [v.tobytes() for v in want]


_SHIM = """#include <cmath>
using std::sqrt;
struct KfDim { unsigned x; };
static KfDim blockIdx = {0}, blockDim = {1}, gridDim = {1}, threadIdx = {0};
extern "C" void kf_grid(unsigned grid, unsigned block, unsigned b, unsigned t) {
  gridDim.x = grid; blockDim.x = block; blockIdx.x = b; threadIdx.x = t;
}
#define __global__
#define __restrict__
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_cuda_source_run_as_cpp_is_bitwise_the_numpy_kernels(graph, rng, tmp_path, name, dtype):
    # Every (block, thread) of a 3 x 4 grid walks its grid-stride share of every member's elements,
    # one after the other: the generated text's arithmetic, member lookup, pointer tables and scalar
    # pointers, compiled by g++ without contraction (IEEE, as --fmad=false). An element done twice
    # or never, a slot written from the wrong member or left alone, shows in the comparison.
    node, scalars = _build(graph, name, dtype)
    grp = node.op.group
    (tmp_path / "k.cpp").write_text(_SHIM + _cuda_source(node, dtype, "kf_k"))
    lib = tmp_path / "k.so"
    subprocess.run(["g++", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "k.cpp")],
                   check=True, capture_output=True)
    so = ctypes.CDLL(str(lib))
    fn = so.kf_k
    values, grads = _state(node, rng, dtype)
    start = {k: v.copy() for k, v in values.items()}
    own = {k: v.copy() for k, v in values.items()}
    n = len(grp.members)
    states = [[values[m.inputs[j].name] for m in grp.members] for j in range(grp.n_state)]
    sptrs = np.array([c[i].ctypes.data for i in range(n) for c in states], np.uint64)
    gptrs = np.array([g.ctypes.data for g in grads], np.uint64)
    offsets, _ = update_launch([g.size for g in grads])
    s_in = [np.asarray(s, dtype) for s in scalars]
    consts = update_constants(grp.op, grp.attrs, np.dtype(dtype), grp.n_scalars)
    real = ctypes.c_float if dtype == "float32" else ctypes.c_double
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * len(s_in) + [real] * len(consts)
    grid, block = 3, 4
    for b in range(grid):
        for t in range(block):
            so.kf_grid(grid, block, b, t)
            fn(sptrs.ctypes.data, gptrs.ctypes.data, offsets.ctypes.data, n, *[s.ctypes.data for s in s_in],
               *[float(c) for c in consts])
    _own(node, own, grads, scalars, dtype)
    for k, v in values.items():
        # every array the numpy kernels change is changed, and the same way
        assert np.array_equal(v, start[k]) == np.array_equal(own[k], start[k]), k
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


def test_a_call_reuses_sizes_work_items_and_constants_until_a_variable_is_reassigned(graph, rng, compiler):
    node, scalars = _build(graph, "momentum", "float32")
    values, grads = _state(node, rng, "float32")
    kernel = compiler.kernel_for(node, "numpy").fn
    own = {k: v.copy() for k, v in values.items()}
    built = []
    orig_work = kernel.work
    kernel.work = lambda sizes, parallel: built.append((sizes, parallel)) or orig_work(sizes, parallel)
    for _ in range(3):
        kernel(Store(node, values), np, *_inputs(node, grads, scalars, values, "float32"))
        _own(node, own, grads, scalars, "float32")
    assert (kernel.prepares, kernel.launch_plans) == (1, 1)  # worked out once, reused twice
    assert built == [(tuple(int(np.prod(s)) for s in SHAPES), False)]
    assert list(kernel._consts) == [np.dtype("float32")]  # the attrs' constants, once per dtype
    values["w2"] = rng.standard_normal(values["w2"].shape).astype("float32")  # a restore or an assign
    own["w2"] = values["w2"].copy()
    kernel(Store(node, values), np, *_inputs(node, grads, scalars, values, "float32"))
    _own(node, own, grads, scalars, "float32")
    assert (kernel.prepares, kernel.launch_plans) == (2, 2) and len(built) == 2  # invalidated, worked out again
    for k, v in values.items():
        np.testing.assert_array_equal(v, own[k], err_msg=k)


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_host_scalars_are_scalar_values_bitwise(graph, compiler, name):
    node, scalars = _build(graph, name, "float32")
    grp = node.op.group
    kernel = compiler.kernel_for(node, "numpy").fn
    for lr_scale in (1.0, 0.37):  # a learning rate that changes from step to step (a schedule)
        s = [np.asarray(v * lr_scale, "float32") for v in scalars]
        got = kernel.host_scalars(np.dtype("float32"), s)
        want = MU.scalar_values(grp.op, grp.attrs, np.float32, s)
        assert [type(v) for v in got] == [type(v) for v in want]
        assert [v.tobytes() for v in got] == [v.tobytes() for v in want]


def test_the_parallel_variant_runs_over_the_threshold_with_threads(graph, rng, compiler_par, compiler):
    shapes = [(300, 200), (7,), (1000,)]  # 61K elements: over PARALLEL_MIN
    assert sum(int(np.prod(s)) for s in shapes) >= MU.PARALLEL_MIN
    node, scalars = _build(graph, "adam", "float32", shapes)
    values, grads = _state(node, rng, "float32")
    own = {k: v.copy() for k, v in values.items()}
    for comp, expect in ((compiler_par, 1), (compiler, 0)):
        kernel = comp.kernel_for(node, "numpy").fn
        kernel(Store(node, values), np, *_inputs(node, grads, scalars, values, "float32"))
        _own(node, own, grads, scalars, "float32")
        assert kernel.parallel_calls == expect  # threads=2 ran the prange variant, threads=1 the serial one
    small, _ = _build(graph, "adam", "float32", [(3,), (4,)])
    sv, sg = _state(small, rng, "float32")
    k = compiler_par.kernel_for(small, "numpy").fn
    k(Store(small, sv), np, *_inputs(small, sg, scalars, sv, "float32"))
    assert k.parallel_calls == 0 and k.launch_plans == 1  # under the threshold: serial even with threads
    for key, v in values.items():
        np.testing.assert_array_equal(v, own[key], err_msg=key)


# --------------------------------------------------------------------------- the CuPy group kernel, on the CPU
class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class FakeDeviceArray(np.ndarray):
    """A host array posing as a CuPy one: ``.data.ptr``, ``.set``; sets are counted."""

    sets = 0

    @property
    def data(self):
        return _Ptr(self.ctypes.data)

    def set(self, host, stream=None):
        FakeDeviceArray.sets += 1
        np.copyto(self, host)


def _dev(a):
    a = np.asarray(a)  # (0-d stays 0-d)
    return (a if a.flags.c_contiguous else a.copy()).view(FakeDeviceArray)


class _Stream:
    capturing = False

    def is_capturing(self):
        return _Stream.capturing


class FakeRawKernel:
    """``cupy.RawKernel`` on the CPU: the source compiled by g++ with the one-thread shim and a
    launcher that walks every (block, thread) of the grid, the arguments passed as CuPy passes
    them (arrays as pointers, numpy scalars by their exact C type)."""

    tmp = None

    def __init__(self, src, name, options=()):
        import re

        self.src, self.name = src, name
        assert options == UPDATE_OPTIONS
        params = re.search(rf"void {name}\((.*?)\) {{", src).group(1)
        names = [p.split()[-1] for p in params.split(", ")]
        self.launcher = (f'extern "C" void kf_launch(unsigned grid, unsigned block, {params}) {{\n'
                         "  for (unsigned b = 0; b < grid; ++b) for (unsigned t = 0; t < block; ++t) {\n"
                         f"    kf_grid(grid, block, b, t); {name}({', '.join(names)});\n  }}\n}}\n")
        self.fn = None

    def compile(self):
        path = FakeRawKernel.tmp / f"{self.name}.cpp"
        path.write_text(_SHIM + self.src + self.launcher)
        lib = path.with_suffix(".so")
        subprocess.run(["g++", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(lib), str(path)],
                       check=True, capture_output=True)
        self.fn = ctypes.CDLL(str(lib)).kf_launch

    def __call__(self, grid, block, args):
        conv, types = [], [ctypes.c_uint, ctypes.c_uint]
        for a in args:
            if isinstance(a, FakeDeviceArray):
                conv.append(a.ctypes.data)
                types.append(ctypes.c_void_p)
            else:  # CuPy takes a numpy scalar as exactly its C type
                ctype = {np.int32: ctypes.c_int, np.float32: ctypes.c_float, np.float64: ctypes.c_double}[type(a)]
                conv.append(ctype(a))
                types.append(ctype)
        self.fn.argtypes = types
        self.fn(grid[0], block[0], *conv)


def _fake_cupy():
    from types import SimpleNamespace

    return SimpleNamespace(
        ndarray=FakeDeviceArray, RawKernel=FakeRawKernel, asarray=_dev,
        ascontiguousarray=lambda a: a if a.flags.c_contiguous else _dev(a),
        empty=lambda shape, dtype: np.empty(shape, dtype).view(FakeDeviceArray),
        cuda=SimpleNamespace(get_current_stream=_Stream))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("name", ["adamw", "rmsprop", "centered_mom", "nesterov_wd", "sgd"])
def test_cupy_group_launch_run_as_cpp_is_bitwise_the_numpy_kernels(graph, rng, tmp_path, name):
    # CupyUpdateGroup itself (pointer tables, device scalars, constants, the launch's argument
    # tuple) over the kernel text compiled as C++: what the GPU would run, short of the GPU.
    from kernelflow.compiler.cupy_backend import CupyUpdateGroup

    FakeRawKernel.tmp = tmp_path
    dtype = "float32"
    node, scalars = _build(graph, name, dtype)
    values, grads = _state(node, rng, dtype)
    start = {k: v.copy() for k, v in values.items()}
    own = {k: v.copy() for k, v in values.items()}
    dev = {k: _dev(v) for k, v in values.items()}
    dgrads = [_dev(g) for g in grads]
    xp = _fake_cupy()
    kernel = CupyUpdateGroup(node.op.group, None, xp)
    FakeDeviceArray.sets = 0
    for _ in range(3):
        ins = _inputs(node, dgrads, scalars, dev, dtype)
        ins = ins[:len(ins) - len(scalars)] + [_dev(np.asarray(s, dtype)) for s in scalars]  # 0-d "device" arrays
        kernel(Store(node, dev), xp, *ins)
        _own(node, own, grads, scalars, dtype)
    assert kernel.launches == 3 and not kernel._broken and kernel.prepares == 1
    assert FakeDeviceArray.sets == 3  # state pointers, offsets, gradient pointers: once each, not per step
    for k, v in dev.items():
        assert np.array_equal(v, start[k]) == np.array_equal(own[k], start[k]), k
        np.testing.assert_array_equal(np.asarray(v), own[k], err_msg=k)


def test_device_table_made_in_a_capture_is_copied_from_pinned_memory_and_refilled_after(monkeypatch):
    import sys
    from types import SimpleNamespace

    from kernelflow.compiler.cupy_backend import _DeviceTable

    monkeypatch.setitem(sys.modules, "cupyx", SimpleNamespace(empty_pinned=lambda shape, dtype: np.empty(shape, dtype)))
    xp = _fake_cupy()
    table = _DeviceTable(np.array([3, 5, 8], np.uint64))
    FakeDeviceArray.sets = 0
    monkeypatch.setattr(_Stream, "capturing", True)
    dev = table.get(xp)
    assert table.pinned is not None and not table.filled  # the graph copies from the pinned buffer
    assert table.pinned.tolist() == [3, 5, 8] and FakeDeviceArray.sets == 1
    assert table.get(xp) is dev and FakeDeviceArray.sets == 2  # another capture copies again
    monkeypatch.setattr(_Stream, "capturing", False)
    dev[...] = 0  # as if the capture was abandoned: the graph never ran the copy
    assert table.get(xp) is dev and dev.tolist() == [3, 5, 8] and table.filled
    assert table.get(xp) is dev and FakeDeviceArray.sets == 3  # filled: no copy any more
