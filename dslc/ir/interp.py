"""A reference interpreter: evaluates an IR graph with each op's NumPy rule."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dslc.ir.graph import Graph, IRError, opdef


def run(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate `graph` on `feeds` (one array per graph input); returns the graph outputs.

    Arrays keep the dtype they are fed with, so float64 feeds give a float64
    evaluation of a float32 graph (what finite-difference checks need).
    """
    env = evaluate(graph, feeds)
    return {v.name: env[v.name] for v in graph.outputs}


def evaluate(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate every value of `graph`; returns the full environment by value name."""
    env: dict[str, np.ndarray] = {}
    for v in graph.inputs:
        if v.name not in feeds:
            raise IRError(f"no feed for graph input {v.name!r}")
        arr = np.asarray(feeds[v.name])
        if arr.ndim != v.rank or any(isinstance(d, int) and d != s
                                     for d, s in zip(v.shape, arr.shape, strict=True)):
            raise IRError(f"feed {v.name!r} has shape {arr.shape}, expected {v.shape}")
        env[v.name] = arr
    env.update({k: np.asarray(a) for k, a in graph.constants.items()})
    for node in graph.nodes:
        args = [env[i] for i in node.inputs if i]
        outs = opdef(node.op).numpy(args, node.attr_dict)
        for name, arr in zip(node.outputs, outs, strict=True):
            env[name] = np.asarray(arr)
    return env
