"""GPU training-step benchmark (issue #16's GPU part): the MLP of bench/train_mlp.py and the CNN of
bench/train_cnn.py on a CUDA GPU through kernelflow's CuPy path, compiler on and off, beside PyTorch
CUDA eager and ``torch.compile`` when torch is installed, and kernelflow on the CPU for scale; also
kernelflow with each step captured as CUDA graphs between its cuBLAS calls and replayed
(``cuda_graphs=True``), without and with the GPU update groups ($KERNELFLOW_GPU_UPDATE_GROUPS);
after each model's table, what those captured (pieces, eager nodes, refusals).

Same models, weights and batches as the CPU benches (float32, Adam). Each step feeds a host
batch (numpy) and fetches the loss, so a step ends synchronised and includes the host-to-device
copy of its batch (MLP b256: 0.8 MB, CNN: 0.8 MB) for every contender alike (torch: ``.cuda()``
of the batch inside the step). Contenders run interleaved in rounds in this one process; medians
and ratios to PyTorch eager (or to kf with the compiler off when torch is missing).

Usage (on the GPU machine: numpy, CuPy, msgpack; torch optional):
    PYTHONPATH=. python bench/gpu_steps.py
    PYTHONPATH=. python bench/gpu_steps.py --rounds 3 --models mlp32
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_cnn  # noqa: E402
import train_mlp  # noqa: E402
from _common import Contender, machine_facts, median, print_facts, print_table, run_interleaved  # noqa: E402

MODELS = ("mlp32", "mlp256", "cnn")


def _batches(model: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if model == "cnn":
        return train_cnn.make_batches()
    return train_mlp.make_batches(int(model[3:]), n_batches=4)


def _kf_graph(g: Any, model: str) -> tuple[Any, Any, Any, Any]:
    """(x, y, loss, train) of ``model`` on graph ``g``, the CPU benches' weights."""
    import kernelflow as kf

    if model != "cnn":
        x = g.placeholder((None, train_mlp.SIZES[0]), "float32", name="x")
        y = g.placeholder((None,), "int64", name="y")
        h = x
        ws = train_mlp.make_weights()
        for i, (w0, b0) in enumerate(ws):
            h = h @ g.variable(w0, name=f"w{i}") + g.variable(b0, name=f"b{i}")
            if i < len(ws) - 1:
                h = kf.relu(h)
        logits = h
    else:
        c = train_cnn
        x = g.placeholder((None, c.HW, c.HW, c.CIN), "float32", name="x")
        y = g.placeholder((None,), "int64", name="y")
        v = {k: g.variable(a, name=k) for k, a in c.make_weights().items()}
        h = kf.max_pool2d(kf.relu(kf.conv2d(x, v["f1"], padding="SAME") + v["b1"]), 2)
        h = kf.max_pool2d(kf.relu(kf.conv2d(h, v["f2"], padding="SAME") + v["b2"]), 2)
        logits = kf.flatten(h) @ v["w3"] + v["b3"]
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    train = kf.optim.Adam(lr=train_mlp.LR, beta1=train_mlp.BETA1, beta2=train_mlp.BETA2,
                          epsilon=train_mlp.EPS).minimize(loss)
    return x, y, loss, train


def build_kf(model: str, device: str, compile: bool, graphs: bool = False,
             groups: bool = False) -> Callable[[np.ndarray, np.ndarray], float]:
    """A kernelflow step; ``groups``: GPU update groups ($KERNELFLOW_GPU_UPDATE_GROUPS=1 while the plan
    is made, by a first step here)."""
    import kernelflow as kf

    rt = kf.connect("inproc", device=device, compile="sync" if compile else "off", cuda_graphs=graphs)
    g = rt.graph(f"{model}_{device}_{compile}_{graphs}_{groups}")
    x, y, loss, train = _kf_graph(g, model)
    step = g.make_callable([train, loss], feed_list=[x, y])
    build_kf.runtimes = [*getattr(build_kf, "runtimes", []), rt]
    if groups:
        old = os.environ.get("KERNELFLOW_GPU_UPDATE_GROUPS")
        os.environ["KERNELFLOW_GPU_UPDATE_GROUPS"] = "1"
        try:
            step(*_batches(model)[0])  # the plan is made (and cached) now, with the switch on
        finally:
            if old is None:
                os.environ.pop("KERNELFLOW_GPU_UPDATE_GROUPS", None)
            else:
                os.environ["KERNELFLOW_GPU_UPDATE_GROUPS"] = old
    if graphs:
        build_kf.graphs = [*getattr(build_kf, "graphs", []), (model, groups, rt, g, [train, loss], [x, y])]
    return lambda xb, yb: float(step(xb, yb)[1])


def graphs_report(model: str) -> list[str]:
    """What the CUDA graph contenders of ``model`` captured: pieces, eager nodes, refusals."""
    lines = []
    for m, groups, rt, g, fetches, feeds in getattr(build_kf, "graphs", []):
        if m != model:
            continue
        session = rt._transport.service.graphs.session(g.name)  # bench only
        cg = session.plan([t.name for t in fetches], [t.name for t in feeds]).cuda_graphs
        if cg is None:
            lines.append(f"{model} (update groups {groups}): no CudaGraphs on the plan")
            continue
        pieces = [s for s in cg.segments if s[0] == "graph"]
        lines.append(f"{model} (update groups {groups}): {len(cg.plan.steps)} steps, {len(pieces)} graphs "
                     f"{[(lo, hi) for _, lo, hi in pieces]}, eager {cg.eager_nodes()}, runs by graphs "
                     f"{cg.launches}, graph launches {cg.graph_launches}, refused {cg.refused}, "
                     f"declined {cg.declined}, reason {cg.reason}")
    return lines


def build_torch(model: str, compiled: bool) -> Callable[[np.ndarray, np.ndarray], float]:
    import torch
    from torch import nn

    dev = torch.device("cuda")
    if model != "cnn":
        layers: list[Any] = []
        ws = train_mlp.make_weights()
        for i, (w0, b0) in enumerate(ws):
            lin = nn.Linear(*w0.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w0.T.copy()))
                lin.bias.copy_(torch.from_numpy(b0))
            layers.append(lin)
            if i < len(ws) - 1:
                layers.append(nn.ReLU())
        net = nn.Sequential(*layers).to(dev)
        prep = lambda xb: xb  # noqa: E731
    else:
        c, w = train_cnn, train_cnn.make_weights()
        conv1, conv2 = nn.Conv2d(c.CIN, c.C1, 3, padding=1), nn.Conv2d(c.C1, c.C2, 3, padding=1)
        dense = nn.Linear((c.HW // 4) ** 2 * c.C2, c.CLASSES)
        with torch.no_grad():
            conv1.weight.copy_(torch.from_numpy(w["f1"].transpose(3, 2, 0, 1).copy()))
            conv2.weight.copy_(torch.from_numpy(w["f2"].transpose(3, 2, 0, 1).copy()))
            dense.weight.copy_(torch.from_numpy(w["w3"].T.copy()))
            for m in (conv1, conv2, dense):
                m.bias.zero_()

        class Cnn(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1, self.conv2, self.dense, self.pool = conv1, conv2, dense, nn.MaxPool2d(2)

            def forward(self, xt: Any) -> Any:
                h = self.pool(torch.relu(self.conv1(xt)))
                h = self.pool(torch.relu(self.conv2(h)))
                return self.dense(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1))

        net = Cnn().to(dev)
        prep = lambda xb: xb.transpose(0, 3, 1, 2).copy()  # noqa: E731  (NCHW, once per batch array)
    opt = torch.optim.Adam(net.parameters(), lr=train_mlp.LR, betas=(train_mlp.BETA1, train_mlp.BETA2),
                           eps=train_mlp.EPS)
    fwd = torch.compile(net) if compiled else net
    loss_fn = nn.CrossEntropyLoss()
    host: dict[int, Any] = {}

    def step(xb: np.ndarray, yb: np.ndarray) -> float:
        key = id(xb)
        if key not in host:
            host[key] = (torch.from_numpy(prep(xb)).pin_memory(), torch.from_numpy(yb).pin_memory())
        xt, yt = (a.to(dev, non_blocking=True) for a in host[key])
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(fwd(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def contenders(model: str, cpu: bool) -> list[Contender]:
    batches = _batches(model)
    out = []

    def add(name: str, fn: Callable[[np.ndarray, np.ndarray], float]) -> None:
        it = iter(range(1 << 62))

        def one() -> float:
            xb, yb = batches[next(it) % len(batches)]
            return fn(xb, yb)

        for _ in range(3):  # warm-up: kernels compiled (CuPy, the kf compiler, torch.compile)
            one()
        for rt in getattr(build_kf, "runtimes", []):
            comp = rt._transport.service.compiler  # bench only: wait for background compiles
            if comp is not None:
                comp.wait_idle()
        out.append(Contender(name, one))

    add("kf gpu, compiler on", build_kf(model, "gpu", True))
    add("kf gpu, compiler on, CUDA graphs", build_kf(model, "gpu", True, graphs=True))
    add("kf gpu, CUDA graphs + update groups", build_kf(model, "gpu", True, graphs=True, groups=True))
    add("kf gpu, compiler off", build_kf(model, "gpu", False))
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            add("PyTorch CUDA eager", build_torch(model, False))
            try:
                add("PyTorch CUDA torch.compile", build_torch(model, True))
            except Exception as e:  # no triton / compiler toolchain on the box
                print(f"torch.compile unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    if cpu:
        add("kf cpu, compiler on", build_kf(model, "cpu", True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block", type=float, default=0.4, help="seconds per contender per round")
    p.add_argument("--no-cpu", action="store_true", help="leave out kernelflow on the CPU")
    args = p.parse_args(argv)
    facts = machine_facts()
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        facts["gpu"] = f"{props['name'].decode()} (CuPy {cupy.__version__}, CUDA runtime " \
                       f"{cupy.cuda.runtime.runtimeGetVersion()})"
    except Exception as e:
        print(f"no usable GPU: {type(e).__name__}: {e}")
        return 1
    print_facts(facts)
    for model in args.models:
        cs = contenders(model, not args.no_cpu)
        run_interleaved(cs, rounds=args.rounds, block_s=args.block, log=lambda s: print(s, file=sys.stderr))
        ref = next((c for c in cs if c.name.startswith("PyTorch CUDA eager")),
                   next(c for c in cs if c.name == "kf gpu, compiler off"))
        base = median(ref.rates)
        print(f"\n### {model}: steps/s (median of {args.rounds} rounds; ratio to {ref.name})\n")
        print_table(("implementation", "median steps/s", "best", f"vs {ref.name}"),
                    [(c.name, f"{median(c.rates):,.1f}", f"{max(c.rates):,.1f}", f"{median(c.rates) / base:.2f}x")
                     for c in cs])
        print("\nCUDA graphs (piecewise):")
        for line in graphs_report(model):
            print(f"- {line}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
