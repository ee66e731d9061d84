"""The runtime's compiler settings: which `Compiler` plans get, per-run options, and ``graph.plan``.

Contents: make_compiler, run_options, PlanMethods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...compiler import Compiler, compile_mode_from_env, format_plan, fused_groups
from ...errors import InvalidArgumentError


def make_compiler(mode: str | None) -> Compiler | None:
    """A `Compiler` for ``mode`` ("on", "sync"; None: ``$KERNELFLOW_COMPILE``), or None for "off".

    Raises:
        InvalidArgumentError: for another mode.
    """
    if mode is None:
        mode = compile_mode_from_env()
    if mode == "off":
        return None
    if mode not in ("on", "sync"):
        raise InvalidArgumentError(f"compile mode must be 'on', 'sync' or 'off'; got {mode!r}")
    return Compiler(mode)


def run_options(options: Any) -> bool:
    """Whether a run compiles, from the run's ``options`` map (None or ``{"compile": bool}``).

    Raises:
        InvalidArgumentError: options that are not a map, unknown keys, or a non-bool ``compile``.
    """
    if options is None:
        return True
    if not isinstance(options, dict):
        raise InvalidArgumentError(f"graph.run: options must be a map; got {type(options).__name__}")
    unknown = set(options) - {"compile"}
    if unknown:
        raise InvalidArgumentError(f"graph.run: unknown option(s) {sorted(map(str, unknown))}; known: ['compile']")
    value = options.get("compile", True)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"graph.run: option 'compile' must be true or false; got {value!r}")
    return value


class PlanMethods:
    """``graph.plan``: the plan a run of (fetches, feeds) executes, as text or as its fused groups.

    Args:
        session: ``session(name) -> GraphSession`` (NotFoundError for an unknown graph).
    """

    def __init__(self, session: Callable[[Any], Any]):
        self._session = session

    def graph_plan(self, name: str, since: int, nodes: list, fetches: list, feed_names: list,
                   options: dict | None = None) -> str | dict:
        """Extend with piggy-backed ``nodes``, build (or find) the plan, and print it.

        ``options`` takes ``graph.run``'s plus ``"format"``: ``"text"`` (the default) or ``"groups"``,
        which answers ``{"compiled": bool, "groups": [{"name", "members", "ops", "outputs"}]}`` (`fused_groups`).
        """
        s = self._session(name)
        if nodes:
            s.extend(list(nodes), since)
        fmt = "text"
        if isinstance(options, dict) and "format" in options:
            options = dict(options)
            fmt = options.pop("format")
            if fmt not in ("text", "groups"):
                raise InvalidArgumentError(f"graph.plan: option 'format' must be 'text' or 'groups'; got {fmt!r}")
        compile_on = run_options(options)
        if not isinstance(fetches, list) or not isinstance(feed_names, list):
            raise InvalidArgumentError("graph.plan: fetches and feed names must be lists")
        with s.lock:
            plan = s.plan(fetches, feed_names, compile_on)
            if fmt == "groups":
                return {"compiled": plan.compiler is not None, "groups": fused_groups(plan.order)}
            fed = {id(t) for t in plan.feeds}
            stats = plan.optimized.stats if plan.optimized is not None else None
            head = "# optimised plan" if plan.compiler is not None else "# plan (compiler off)"
            return head + "\n" + format_plan(plan.order, fed, stats)
