"""GraphInspector layout + first render model: time for 2,000- and 20,000-node graphs (issue #6).

Times `GraphInspector(g)` end to end (re-reading the graph, layout, packing the binary model
the front end draws) and the layout alone, for an MLP graph with its optimizer (name scopes
as kf.layers and kf.optim make them). Target: 2,000 nodes under 2 s.

    .venv/bin/python bench/inspector.py
"""

from __future__ import annotations

import time

import kernelflow as kf
from kernelflow.widgets import GraphInspector
from kernelflow.widgets.layout import LayoutNode, compute_layout, scope_sizes


def mlp_graph(depth: int) -> kf.Graph:
    g = kf.Graph(f"mlp{depth}")
    x = g.placeholder((None, 16), name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = x
    for i in range(depth):
        h = kf.layers.dense(h, 16, activation=kf.relu, name=f"dense{i}")
    loss = kf.mean(kf.softmax_cross_entropy(kf.layers.dense(h, 10, name="out"), y))
    kf.optim.Adam(1e-3).minimize(loss)
    return g


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    print(f"{'nodes':>7} {'drawn (default)':>16} {'inspector (s)':>14} {'layout all open (s)':>20} {'boxes open':>11}")
    for depth in (95, 960):
        g = mlp_graph(depth)
        nodes = [LayoutNode(n.name, tuple(i.name for i in n.inputs), tuple(c.name for c in n.control_inputs),
                            n.op.name, str(n.shape)) for n in g.nodes()]
        GraphInspector(g)  # warm imports (igraph, anywidget)
        t_insp = best_of(lambda g=g: GraphInspector(g))
        w = GraphInspector(g)
        everything = set(scope_sizes(n.name for n in nodes))
        t_open = best_of(lambda nodes=nodes, e=everything: compute_layout(nodes, e), repeat=1)
        n_open = len(compute_layout(nodes, everything).boxes)
        print(f"{len(g):>7} {len(w.meta['ids']):>16} {t_insp:>14.3f} {t_open:>20.3f} {n_open:>11}")


if __name__ == "__main__":
    main()
