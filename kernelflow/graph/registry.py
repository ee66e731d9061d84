"""The op table: `OpDef`, `define_op`, and lookup by wire name. The only op registry.

An `OpDef` holds everything the graph side knows about an op: its inputs, typed attrs
with defaults, the shape rule, the dtype rule and the gradient rule (`vjp`), side by side.
Kernels live in `kernelflow.kernels`, registered against the same `OpDef` object.

Contents: REQUIRED, OpDef, define_op, lookup, all_ops.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError, NotFoundError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Attr default meaning: the caller must give this attr."""


def _same_dtype(*avals: Any, **attrs: Any) -> str:
    return avals[0].dtype


@dataclass(frozen=True, eq=False)
class OpDef:
    """Schema and rules of one op.

    Attributes:
        name: the op's wire name (``"matmul"``).
        inputs: input names; a last name starting with ``*`` takes any number of tensors.
        attrs: attr name -> default (``REQUIRED`` when there is none).
        shape_rule: ``(*in_avals, **attrs) -> shape`` (a tuple of ints/None). Never reads data.
        dtype_rule: ``(*in_avals, **attrs) -> dtype name`` (``None`` for ops with no value).
        vjp: ``(g, out, *inputs, **attrs) -> cotangent per input`` built from graph ops, or None.
        differentiable: False marks an explicit opt-out of gradients (integer outputs, state).
        stateful: has side effects or randomness: never merged, always run when in a plan.
        random: draws random numbers (an exported model must not hold one: it would answer
            differently each time).
        alias: the kernel may return its first input or a view of it (identity, reshape...);
            the executor copies such values before handing them out of a run.
        mutates: input positions that must be variables, updated in place by the kernel.
        doc: one line for error messages and docs.
        parts_rule: for ops yielding several values (control flow): ``(*in_avals, **attrs) ->
            tuple of Avals``; the node's aval then has those ``parts`` (read with ``tuple_get``).
    """

    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    shape_rule: Callable[..., tuple] | None = None
    dtype_rule: Callable[..., str | None] = _same_dtype
    vjp: Callable[..., tuple] | None = None
    differentiable: bool = True
    stateful: bool = False
    random: bool = False
    alias: bool = False
    mutates: tuple[int, ...] = ()
    doc: str = ""
    parts_rule: Callable[..., tuple] | None = None

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    @property
    def variadic(self) -> bool:
        """True when the last input takes any number of tensors."""
        return bool(self.inputs) and self.inputs[-1].startswith("*")

    def check_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Attrs with defaults filled in; unknown or missing attrs raise InvalidArgumentError."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise InvalidArgumentError(
                f"{self.name}: unknown attr(s) {sorted(unknown)}; expected some of {sorted(self.attrs)}"
            )
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = attrs[key]
            elif default is REQUIRED:
                raise InvalidArgumentError(f"{self.name}: attr '{key}' is required")
            else:
                out[key] = default
        return out

    def bind(self, *inputs: Any, name: str | None = None, **attrs: Any) -> Any:
        """Add a node of this op to the graph its tensor inputs belong to; returns its Tensor.

        Python scalars and numpy arrays among ``inputs`` become constants (weakly typed).
        """
        from .ir import bind_op  # ir imports this module

        return bind_op(self, inputs, attrs, name)


_OPS: dict[str, OpDef] = {}


def define_op(name: str, inputs: tuple[str, ...] | list[str], **kwargs: Any) -> OpDef:
    """Create an `OpDef` and enter it in the registry under ``name``.

    Raises:
        InvalidArgumentError: when ``name`` is defined twice, or has neither a vjp nor
            ``differentiable=False``.
    """
    if name in _OPS:
        raise InvalidArgumentError(f"define_op: op '{name}' is defined twice")
    op = OpDef(name=name, inputs=tuple(inputs), **kwargs)
    if op.vjp is None and op.differentiable:
        raise InvalidArgumentError(f"define_op: op '{name}' needs a vjp or differentiable=False")
    if op.shape_rule is None:
        raise InvalidArgumentError(f"define_op: op '{name}' needs a shape_rule")
    _OPS[name] = op
    return op


def lookup(name: str) -> OpDef:
    """The `OpDef` registered under a wire name.

    Raises:
        NotFoundError: naming the op, with the closest known names.
    """
    _load_all()
    try:
        return _OPS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_OPS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise NotFoundError(f"unknown op '{name}'{hint}") from None


def all_ops() -> dict[str, OpDef]:
    """Every registered op by name (loads every op family first)."""
    _load_all()
    return dict(_OPS)


def _load_all() -> None:
    from . import ops  # noqa: F401  (importing the package defines every op)
