"""`dslc gradcheck`: the compiled gradients against central finite differences, in float64.

The training step is built in float64 with its optimiser replaced by plain
SGD at lr = 1 and a constant schedule, so that `p - p.next` is exactly the
gradient the compiled backward pass computes (regularisation included). The
reference interpreter then evaluates the loss at `p ± eps` for a sample of
each parameter's elements. Dropout masks depend only on (seed, step), which
stay fixed, so the loss is a deterministic function of the parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dslc.check.model import CheckedModel, OptimizerSpec, ScheduleSpec
from dslc.errors import DslcError
from dslc.runtime.data import label_classes

SGD_PLAIN = OptimizerSpec(
    "SGD",
    {
        "lr": 1.0,
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "clip_norm": None,
        "clip_value": None,
    },
)


@dataclass(frozen=True)
class GradRow:
    """The comparison for one parameter."""

    name: str
    shape: tuple[int, ...]
    checked: int  # elements compared
    max_abs_err: float
    max_rel_err: float
    ok: bool

    def line(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"{self.name:<32} {str(list(self.shape)):<14} {self.checked:>4} checked  "
            f"abs {self.max_abs_err:.2e}  rel {self.max_rel_err:.2e}  {verdict}"
        )


def random_batch(
    model: CheckedModel, batch: int, dims: dict[str, int], seed: int
) -> dict[str, np.ndarray]:
    """A random batch for every input and target: floats ~ N(0, 1), labels within their classes."""
    rng = np.random.default_rng(seed)
    classes = label_classes(model)
    out: dict[str, np.ndarray] = {}
    for decl in (*model.inputs, *model.targets):
        shape = (batch, *(dims.get(d, 3) if isinstance(d, str) else d for d in decl.type.shape))
        if decl.type.dtype == "int64":
            high = classes.get(decl.name, 1)
            out[decl.name] = rng.integers(0, high, size=shape).astype(np.int64)
        elif decl in model.targets:
            out[decl.name] = rng.uniform(0.0, 1.0, size=shape)
        else:
            out[decl.name] = rng.normal(size=shape)
    return out


def gradcheck(
    model: CheckedModel,
    *,
    batch: int = 4,
    seed: int = 0,
    samples: int = 6,
    eps: float = 1e-6,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> list[GradRow]:
    """Compare each parameter's compiled gradient with central differences, row by row."""
    from dslc.ir.interp import run
    from dslc.lower import build_train_step, initial_state, optimizer_state

    if model.loss is None:
        raise DslcError(f"model {model.name} has no loss, so there is no gradient to check")
    plain = dataclasses.replace(
        model,
        train=dataclasses.replace(
            model.train, optimizer=SGD_PLAIN, schedule=ScheduleSpec("constant", {})
        ),
    )
    dims: dict[str, int] = {
        d: 3
        for decl in (*model.inputs, *model.targets)
        for d in decl.type.shape
        if isinstance(d, str)
    }
    graph = build_train_step(plain, batch=batch, dims=dims, total_steps=1, float_dtype="float64")
    feeds: dict[str, np.ndarray] = {}
    state = {**initial_state(plain, seed), **optimizer_state(plain)}
    for k, v in state.items():
        feeds[k] = v.astype(np.float64) if v.dtype.kind == "f" else v
    feeds["seed"] = np.array(seed, dtype=np.int64)
    feeds.update(random_batch(model, batch, dims, seed + 1))
    feeds = {v.name: feeds[v.name] for v in graph.inputs}

    out = run(graph, feeds)
    rng = np.random.default_rng(seed + 2)
    rows = []
    for spec in model.params():
        if not spec.trainable:
            continue
        p = feeds[spec.name]
        grad = (p - out[f"{spec.name}.next"]).astype(np.float64)  # SGD, lr = 1
        flat_idx = (
            np.arange(p.size) if p.size <= samples else rng.choice(p.size, samples, replace=False)
        )
        abs_err, rel_err, ok = 0.0, 0.0, True
        for i in flat_idx:
            idx = np.unravel_index(int(i), p.shape)
            fd = _central_difference(graph, feeds, spec.name, idx, eps, run)
            an = float(grad[idx])
            err = abs(fd - an)
            abs_err = max(abs_err, err)
            rel_err = max(rel_err, err / max(abs(fd), abs(an), 1e-12))
            ok = ok and err <= atol + rtol * max(abs(fd), abs(an))
        rows.append(GradRow(spec.name, tuple(spec.shape), len(flat_idx), abs_err, rel_err, ok))
    return rows


def _central_difference(graph, feeds, name, idx, eps, run) -> float:
    p = feeds[name]
    values = []
    for sign in (1.0, -1.0):
        moved = p.copy()
        moved[idx] += sign * eps
        values.append(float(run(graph, {**feeds, name: moved})["loss"]))
    return (values[0] - values[1]) / (2 * eps)
