"""Ops as ``torch.fx`` leaves: a traced call is recorded as one node, never traced into."""
from __future__ import annotations

import functools

import torch.fx


def _has_proxy(value) -> bool:
    if isinstance(value, torch.fx.Proxy):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_proxy(v) for v in value)
    return False


def fx_leaf(fn):
    """Record calls of ``fn`` that receive fx proxies as a single ``call_function`` node.

    ``torch.fx.symbolic_trace`` would otherwise run ``fn``'s Python checks (shapes, RoI formats)
    on proxies and fail. Unlike ``torch.fx.wrap``, this works wherever ``fn`` is called from, not
    only through the defining module's globals. Eager calls, ``torch.compile`` and
    ``torch.export`` are unaffected (they never pass fx proxies).
    """
    @functools.wraps(fn)
    def leaf(*args, **kwargs):
        for value in (*args, *kwargs.values()):
            if _has_proxy(value):
                return value_tracer(args, kwargs).create_proxy("call_function", leaf, args, kwargs)
        return fn(*args, **kwargs)

    return leaf


def value_tracer(args, kwargs):
    """The tracer of the first proxy among ``args`` / ``kwargs`` (lists searched too)."""
    stack = [*args, *kwargs.values()]
    while stack:
        v = stack.pop(0)
        if isinstance(v, torch.fx.Proxy):
            return v.tracer
        if isinstance(v, (list, tuple)):
            stack.extend(v)
    raise AssertionError("no fx proxy among the arguments")
