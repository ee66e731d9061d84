"""Symbolic IR: graphs, tensors, the op registry, shape rules and reverse-mode autodiff.

Imports numpy only; never kernels, cupy, tornado or IPython.
"""

from . import ops
from .autodiff import gradients
from .control_flow import cond, fori_loop, map_fn, scan, switch_case, while_loop
from .ir import Aval, Graph, Tensor, Variable, node_to_dict, toposort
from .registry import OpDef, all_ops, define_op, lookup

__all__ = ["Aval", "Graph", "Tensor", "Variable", "OpDef", "define_op", "lookup", "all_ops", "gradients",
           "toposort", "node_to_dict", "ops", "cond", "switch_case", "while_loop", "scan", "map_fn", "fori_loop"]
