"""Ops as ``torch.fx`` leaves: a traced call is recorded as one node, never traced into."""
from __future__ import annotations

import functools

import torch.fx


def fx_leaf(fn):
    """Record calls of ``fn`` that receive fx proxies as a single ``call_function`` node.

    ``torch.fx.symbolic_trace`` would otherwise run ``fn``'s Python checks (shapes, RoI formats)
    on proxies and fail. Unlike ``torch.fx.wrap``, this works wherever ``fn`` is called from, not
    only through the defining module's globals. Eager calls, ``torch.compile`` and
    ``torch.export`` are unaffected (they never pass fx proxies).
    """
    @functools.wraps(fn)
    def leaf(*args, **kwargs):
        proxy = first_proxy((*args, *kwargs.values()))
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", leaf, args, kwargs)
        return fn(*args, **kwargs)

    return leaf


def first_proxy(values):
    """The first fx proxy among ``values`` (lists and tuples searched too), or None."""
    for v in values:
        if isinstance(v, torch.fx.Proxy):
            return v
        if isinstance(v, (list, tuple)):
            found = first_proxy(v)
            if found is not None:
                return found
    return None
