"""The graph compiler: passes over a pruned plan and fused kernels (numba on CPU, CuPy on GPU)."""

from .fusion import FusedOp, Program
from .pipeline import Compiler, OptimizedPlan, compile_mode_from_env, format_plan, fused_groups

__all__ = ["Compiler", "FusedOp", "OptimizedPlan", "Program", "compile_mode_from_env", "format_plan", "fused_groups"]
