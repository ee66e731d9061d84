"""Grouping the optimiser updates of many variables into one node (compiler/updates.py): which nodes
group, what the plan shows, and that training with groups, without them and without the compiler
gives bitwise the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler.updates import group_updates

from .conftest import plan_of

pytest.importorskip("numba")

SIZES = (12, 16, 16, 4)
OPTIMISERS = {
    "adam": lambda: kf.optim.Adam(lr=0.01),
    "adamw": lambda: kf.optim.AdamW(lr=0.01, weight_decay=0.05),
    "sgd": lambda: kf.optim.SGD(lr=0.1),
    "momentum": lambda: kf.optim.SGD(lr=0.05, momentum=0.9),
    "nesterov_wd": lambda: kf.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "rmsprop": lambda: kf.optim.RMSProp(lr=0.01),
    "centered_mom": lambda: kf.optim.RMSProp(lr=0.01, momentum=0.9, centered=True),
    "adagrad": lambda: kf.optim.Adagrad(lr=0.1),
}


def _weights(dtype="float32"):
    rng = np.random.default_rng(3)
    return [((rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype), (rng.standard_normal(b) * 0.1).astype(dtype))
            for a, b in zip(SIZES[:-1], SIZES[1:])]


def _batches(n=4, batch=24):
    rng = np.random.default_rng(4)
    return [(rng.standard_normal((batch, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], batch))
            for _ in range(n)]


def _mlp(g, opt, dtype="float32"):
    """An MLP like bench/train_mlp.py's, smaller: (x, y, train op, variables)."""
    x = g.placeholder((None, SIZES[0]), dtype, name="x")
    y = g.placeholder((None,), "int64", name="y")
    h, params = x, []
    for i, (w0, b0) in enumerate(_weights(dtype)):
        w, b = g.variable(w0, name=f"w{i}"), g.variable(b0, name=f"b{i}")
        params += [w, b]
        h = h @ w + b
        if i < len(SIZES) - 2:
            h = kf.relu(h)
    loss = kf.mean(kf.softmax_cross_entropy(h, y))
    return x, y, OPTIMISERS[opt]().minimize(loss), params


def _connect(monkeypatch, mode, group=True):
    monkeypatch.setenv("KERNELFLOW_GROUP_UPDATES", "1" if group else "0")
    return kf.connect("inproc", compile=mode)


def _train(monkeypatch, opt, mode, group=True, steps=4, dtype="float32"):
    rt = _connect(monkeypatch, mode, group)
    g = rt.graph("t")
    x, y, train, params = _mlp(g, opt, dtype)
    for _ in range(steps // 4):
        for xv, yv in _batches():
            g.run(train, {x: xv.astype(dtype), y: yv})
    out = {v.name: g.read_variable(v) for v in g.variables()}
    rt.close()
    return out


def test_the_updates_of_an_adam_mlp_become_one_group_node(monkeypatch):
    rt = _connect(monkeypatch, "sync")
    g = rt.graph("plan")
    x, y, train, params = _mlp(g, "adam")
    groups = g.fused_groups(train, feeds=[x, y])
    updates = [grp for grp in groups if grp["ops"][0] == "apply_adam"]
    names = [f"Adam/update_{v.name}" for v in params]
    assert updates == [{"name": "Adam/update_b2", "members": names, "ops": ["apply_adam"] * len(params),
                        "outputs": names}]
    text = g.plan(train, feeds=[x, y])
    assert "Adam/update_b2 = update_group[apply_adam x6] : float32(4,)" in text
    assert "    | Adam/update_w0 = apply_adam(w0, Adam/w0/m, Adam/w0/v, " in text
    assert "update_groups 1, grouped_updates 6" in text.splitlines()[-1]
    # the train op now waits for the group node, once per member it stood in for
    assert "Adam/train = group(" + ", ".join(["Adam/update_b2"] * 6) + ", Adam/increment_global_step)" in text
    assert "update_group" not in g.plan(train, feeds=[x, y], compile=False)
    rt.close()
    off = _connect(monkeypatch, "sync", group=False)
    g = off.graph("plan")
    x, y, train, _ = _mlp(g, "adam")
    assert "update_group" not in g.plan(train, feeds=[x, y])
    off.close()


def _updates(g, specs):
    """Updates ``(op, var dtype, shared lr tensor, attrs)`` on fresh variables; their group op."""
    ups = []
    for i, (make, dtype, lr, attrs) in enumerate(specs):
        v = g.variable(np.full(3 + i, 1.0, dtype), name=f"v{i}")
        slots = {kf.apply_gradient_descent: 0, kf.apply_momentum: 1, kf.apply_adam: 2}[make]
        sl = [g.variable(np.zeros(3 + i, dtype), name=f"v{i}_s{j}") for j in range(slots)]
        ups.append(make(v, *sl, kf.cast(v * 0.5, dtype), lr[dtype], **attrs, name=f"u{i}"))
    return ups


def _groups(order, fed, fetches):
    _, _, made = group_updates(order, fed, fetches, lambda n: True)
    return [[m.name for m in n.op.group.members] for n in made]


def test_groups_are_split_by_op_attrs_learning_rate_and_dtype(graph):
    lr = {d: graph.constant(np.array(0.1, d)) for d in ("float32", "float64")}
    lr2 = {d: graph.constant(np.array(0.2, d)) for d in ("float32", "float64")}
    gd, ad, mo = kf.apply_gradient_descent, kf.apply_adam, kf.apply_momentum
    ups = _updates(graph, [
        (gd, "float32", lr, {}), (ad, "float32", lr, {}), (gd, "float32", lr, {}), (gd, "float64", lr, {}),
        (ad, "float32", lr, {"beta1": 0.8}), (ad, "float32", lr, {}), (gd, "float32", lr2, {}),
        (gd, "float64", lr, {}), (mo, "float32", lr, {"momentum": 0.9}), (mo, "float32", lr, {"momentum": 0.9}),
        (gd, "float32", lr, {"weight_decay": 0.1}),
    ])
    train = kf.group(ups)
    order, fed = plan_of([train])
    assert sorted(_groups(order, fed, [train])) == [["u0", "u2"], ["u1", "u5"], ["u3", "u7"], ["u8", "u9"]]


def test_a_fetched_update_or_one_whose_value_is_used_stays_alone(graph):
    lr = {"float32": graph.constant(np.array(0.1, "float32"))}
    gd = kf.apply_gradient_descent
    ups = _updates(graph, [(gd, "float32", lr, {})] * 4)
    doubled = ups[1] * 2.0
    train = kf.group(ups)
    order, fed = plan_of([train, ups[0], doubled])
    assert _groups(order, fed, [train, ups[0], doubled]) == [["u2", "u3"]]


def test_a_node_that_depends_on_an_update_ends_the_group_and_sees_the_update(monkeypatch):
    results = {}
    for mode in ("sync", "off"):
        rt = _connect(monkeypatch, mode)
        g = rt.graph("dep")
        lr = g.constant(np.array(0.5, "float32"))
        vs = [g.variable(np.full(3, 1.0 + i, "float32"), name=f"v{i}") for i in range(4)]

        def gd(i, grad, vs=vs, lr=lr):
            return kf.apply_gradient_descent(vs[i], grad, lr, name=f"u{i}")

        u0 = gd(0, vs[0] * 0.5)
        with g.control_dependencies([u0]):
            after = kf.read_variable(vs[0]) * 3.0  # reads v0 after its update: u0 cannot move past it
        u1 = gd(1, vs[1] * 0.5)
        u2 = gd(2, vs[2] * 0.5)
        u3 = gd(3, after)  # its gradient depends on u0's update
        train = kf.group([u0, u1, u2, u3])
        groups = g.fused_groups([after, train])
        out = g.run([after, train])[0]
        results[mode] = out, [g.read_variable(v) for v in vs], groups
        rt.close()
    assert [grp["members"] for grp in results["sync"][2] if grp["ops"][0].startswith("apply")] == [["u1", "u2", "u3"]]
    np.testing.assert_array_equal(results["sync"][0], np.full(3, 2.25, np.float32))  # (1 - 0.5 * 0.5) * 3
    np.testing.assert_array_equal(results["sync"][1][3], np.full(3, 4 - 0.5 * 2.25, np.float32))
    for a, b in zip(results["sync"][1], results["off"][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
def test_training_with_groups_is_bitwise_without_them_and_without_the_compiler(monkeypatch, opt):
    calls = _launches(monkeypatch)
    grouped = _train(monkeypatch, opt, "sync")
    assert calls and all(calls)  # the group kernel itself ran (a fallback to the members gives the same bits)
    alone = _train(monkeypatch, opt, "sync", group=False)
    off = _train(monkeypatch, opt, "off")
    w0 = _weights()
    assert not np.array_equal(grouped["w0"], w0[0][0])
    for k in off:
        np.testing.assert_array_equal(grouped[k], off[k], err_msg=k)
        np.testing.assert_array_equal(alone[k], off[k], err_msg=k)


def test_float64_training_with_groups_is_bitwise_without_the_compiler(monkeypatch):
    calls = _launches(monkeypatch)
    grouped = _train(monkeypatch, "adam", "sync", dtype="float64")
    assert calls and all(calls)
    off = _train(monkeypatch, "adam", "off", dtype="float64")
    for k in off:
        np.testing.assert_array_equal(grouped[k], off[k], err_msg=k)


def test_background_compilation_switches_midway_without_changing_the_trajectory(monkeypatch, tmp_path):
    # Mode "on": the group runs its members' own kernels until its kernel is compiled, then the kernel.
    monkeypatch.setenv("KERNELFLOW_CACHE_DIR", str(tmp_path))
    calls = _launches(monkeypatch)
    on = _train(monkeypatch, "adamw", "on", steps=16)
    off = _train(monkeypatch, "adamw", "off", steps=16)
    # the members' own kernels while the group kernel compiles (a cold cache), then only the kernel
    assert len(calls) == 16 and not calls[0] and calls == sorted(calls)
    for k in off:
        np.testing.assert_array_equal(on[k], off[k], err_msg=k)


def test_a_job_resumed_with_the_compiler_off_continues_the_same_trajectory(monkeypatch):
    whole = _train(monkeypatch, "adam", "sync", steps=8)
    first = _train(monkeypatch, "adam", "sync", steps=4)  # "checkpoint" after 4 steps, compiler on
    rt = _connect(monkeypatch, "off")
    g = rt.graph("t")
    x, y, train, _ = _mlp(g, "adam")
    g.run(kf.group([v for v in g.variables()]))  # slots exist once the graph has run
    for v in g.variables():
        g.write_variable(v, first[v.name])
    for xv, yv in _batches():
        g.run(train, {x: xv, y: yv})
    for v in g.variables():
        np.testing.assert_array_equal(g.read_variable(v), whole[v.name], err_msg=v.name)
    assert int(g.read_variable(g["global_step"])) == 8
    rt.close()


def test_parallel_kernel_on_two_threads_is_bitwise_too(monkeypatch):
    # 60K elements: the parallel variant, its work items split over the threads
    monkeypatch.setenv("KERNELFLOW_COMPILE_THREADS", "2")
    # tanh(w) feeds the loss and its gradient: with several outputs, the loss's fused kernel would
    # compute it with LLVM's tanh (last-bit differences, docs/compiler.md), not numpy's
    monkeypatch.setenv("KERNELFLOW_FUSE_MULTI_OUTPUT", "0")
    rng = np.random.default_rng(8)
    w0 = [rng.standard_normal(s).astype(np.float32) for s in ((200, 250), (10_000,), (7,))]
    out = {}
    for mode in ("sync", "off"):
        rt = _connect(monkeypatch, mode)
        g = rt.graph("par")
        ws = [g.variable(w, name=f"p{i}") for i, w in enumerate(w0)]
        loss = sum(kf.sum(kf.square(kf.tanh(w))) for w in ws)
        train = kf.optim.AdamW(lr=0.01).minimize(loss)
        if mode == "sync":
            assert [grp["members"] for grp in g.fused_groups(train) if grp["ops"][0] == "apply_adamw"] == [
                ["AdamW/update_p0", "AdamW/update_p1", "AdamW/update_p2"]]
        for _ in range(3):
            g.run(train)
        out[mode] = [g.read_variable(w) for w in ws]
        rt.close()
    for a, b, w in zip(out["sync"], out["off"], w0):
        assert not np.array_equal(a, w)
        np.testing.assert_array_equal(a, b)


def _launches(monkeypatch):
    """The group kernel's launches (True: it ran) from now on in this test."""
    from kernelflow.compiler import multi_update as MU

    calls = []
    orig = MU.CpuUpdateGroup.launch

    def launch(self, t, cols, scalars_in, memo):
        ok = orig(self, t, cols, scalars_in, memo)
        calls.append(ok)
        return ok

    monkeypatch.setattr(MU.CpuUpdateGroup, "launch", launch)
    return calls


@pytest.mark.parametrize("switch", [None, "0", "1"])
def test_gpu_plans_group_updates_only_with_the_gpu_switch(monkeypatch, graph, tmp_path, switch):
    # The CuPy group kernel is not yet proven on a GPU: $KERNELFLOW_GPU_UPDATE_GROUPS=1 turns it on.
    from types import SimpleNamespace

    from kernelflow.compiler.pipeline import Compiler

    from .conftest import plan_of

    if switch is None:
        monkeypatch.delenv("KERNELFLOW_GPU_UPDATE_GROUPS", raising=False)
    else:
        monkeypatch.setenv("KERNELFLOW_GPU_UPDATE_GROUPS", switch)
    x, y, train, params = _mlp(graph, "adam")
    order, fed = plan_of([train], [x, y])
    comp = Compiler(mode="sync", cache_dir=str(tmp_path))
    for backend, expect in (("cupy", switch == "1"), ("numpy", True)):
        place = SimpleNamespace(backend=backend, index=0)
        opt = comp.optimize(order, fed, [train], lambda n, p=place: p)
        assert opt.stats.get("update_groups", 0) == (1 if expect else 0), backend
