"""The Python API, for notebooks and for the command line.

    import dslc.api as dslc
    model = dslc.load("examples/digits_mlp.nn")
    result = dslc.train(model, epochs=5)
    print(dslc.evaluate(model, result.run_dir + "/best.safetensors"))
    dslc.export(model, result.run_dir + "/best.safetensors", "digits.onnx")

Every function accepts a checked model or the path of a `.nn` file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dslc.check.model import CheckedModel
from dslc.errors import DslcError
from dslc.runtime.checkpoint import load_checkpoint, model_state, save_checkpoint
from dslc.runtime.data import (
    Dataset,
    label_classes,
    load_dataset,
    model_dir,
    symbolic_dims,
    validation_count,
)
from dslc.runtime.gradcheck import GradRow
from dslc.runtime.gradcheck import gradcheck as _gradcheck
from dslc.runtime.guard import TrainingDiverged
from dslc.runtime.session import EvalRunner, resolve_device
from dslc.runtime.trainer import (
    Callback,
    StepCallback,
    TrainOptions,
    TrainResult,
    state_for_eval,
)
from dslc.runtime.trainer import train as _train

__all__ = [
    "Confusion",
    "DslcError",
    "Dataset",
    "GradRow",
    "TrainResult",
    "TrainingDiverged",
    "compile",
    "confusion_matrix",
    "evaluate",
    "export",
    "gradcheck",
    "load",
    "load_data",
    "plot",
    "train",
]


def load(path: str) -> CheckedModel:
    """Parse and check a `.nn` file."""
    from dslc.check import check_file

    if os.path.isdir(path):
        raise DslcError(f"{path}: is a folder, not a .nn file")
    if not os.path.exists(path):
        raise DslcError(f"{path}: no such file")
    return check_file(path)


def _model(model: CheckedModel | str) -> CheckedModel:
    return load(model) if isinstance(model, str) else model


def load_data(model: CheckedModel | str, data: str | None = None) -> Dataset:
    """The dataset `data` (default: the train block's) bound to the model's inputs and targets."""
    m = _model(model)
    return load_dataset(data or m.train.data, m, model_dir(m))


def compile(model: CheckedModel | str, out_dir: str, *, seed: int | None = None) -> dict[str, str]:
    """Write train_step.onnx, eval_step.onnx, model.onnx and init.safetensors into `out_dir`.

    The training step has the train block's batch size fixed; the schedule's
    length comes from the train block's data and epochs when the data loads.
    Returns the written paths by kind.
    """
    from dslc.emit_onnx import save, to_onnx
    from dslc.lower import build_eval_step, build_train_step, initial_state, optimizer_state

    m = _model(model)
    cfg = m.train
    seed = cfg.seed if seed is None else seed
    dims: dict[str, int] = {}
    total_steps = cfg.epochs
    try:
        data = load_data(m)
        dims = symbolic_dims(data, m)
        n = len(data)
        if not isinstance(cfg.validation, str):
            n -= validation_count(n, float(cfg.validation)) if cfg.validation else 0
        total_steps = cfg.epochs * math.ceil(n / min(cfg.batch_size, n))
    except DslcError:
        pass  # no data at hand: the graphs stand alone, the schedule counts one step per epoch
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        k: os.path.join(out_dir, f)
        for k, f in (
            ("train_step", "train_step.onnx"),
            ("eval_step", "eval_step.onnx"),
            ("model", "model.onnx"),
            ("init", "init.safetensors"),
        )
    }
    state = {**initial_state(m, seed), **optimizer_state(m)}
    if m.loss is not None:
        save(
            to_onnx(build_train_step(m, batch=cfg.batch_size, dims=dims, total_steps=total_steps)),
            paths["train_step"],
        )
        save(to_onnx(build_eval_step(m, dims=dims)), paths["eval_step"])
    else:
        del paths["train_step"], paths["eval_step"]
    save(to_onnx(*_inference(m, state)), paths["model"])
    save_checkpoint(paths["init"], state, {"model": m.name, "epoch": "0", "position": "0"})
    return paths


def _inference(model: CheckedModel, state: Mapping[str, np.ndarray]):
    from dslc.lower import build_inference

    graph = build_inference(model)
    names = {v.name for v in graph.inputs}
    return graph, {k: v for k, v in state.items() if k in names}


def train(
    model: CheckedModel | str,
    *,
    data: str | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    device: str | None = None,
    out: str | None = None,
    init: str | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    batch_size: int | None = None,
    seed: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    checkpoint_every: int | None = None,
    on_step: Sequence[StepCallback] | StepCallback = (),
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Train as the model's train block says, with these overrides; see `dslc train`.

    `callbacks` are called with each epoch's record (returning True stops after
    that epoch); `on_step` with `{epoch, batch, step, loss, <metrics>, lr}` after
    every optimiser step. A diverging run raises `TrainingDiverged` (a DslcError).
    """
    opts = TrainOptions(
        data=data,
        epochs=epochs,
        steps=steps,
        device=device,
        out=out,
        init=init,
        resume=resume,
        batch_size=batch_size,
        seed=seed,
        threads=threads,
        progress=progress,
        checkpoint_every=checkpoint_every,
        command=tuple(command) if command is not None else None,
    )
    steps_cb = (on_step,) if callable(on_step) else tuple(on_step)
    return _train(_model(model), opts, callbacks, step_callbacks=steps_cb)


def checkpoint_state(model: CheckedModel, checkpoint: str) -> dict[str, np.ndarray]:
    """Parameters and buffers from a checkpoint; buffers it lacks keep their initial values."""
    from dslc.lower import initial_state

    tensors, _ = load_checkpoint(checkpoint)
    state = initial_state(model, model.train.seed)
    state.update(model_state(model, tensors, checkpoint))
    return state_for_eval(state)


def evaluate(
    model: CheckedModel | str,
    checkpoint: str,
    data: str | None = None,
    *,
    device: str | None = "cpu",
    batch_size: int = 256,
) -> dict[str, float]:
    """Loss and metrics (batch-size-weighted means) of a checkpoint on a whole dataset."""
    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_eval_step

    m = _model(model)
    if m.loss is None and not m.metrics:
        raise DslcError(f"model {m.name} has no loss or metric to evaluate")
    state = checkpoint_state(m, checkpoint)
    ds = load_data(m, data)
    dims = symbolic_dims(ds, m)
    runner = EvalRunner(
        lambda b: to_onnx(build_eval_step(m, batch=b, dims=dims)).SerializeToString(),
        device=resolve_device(device),
    )
    names = (["loss"] if m.loss is not None else []) + [name for name, _ in m.metrics]
    return runner.evaluate(state, ds.arrays, min(batch_size, len(ds)), names)


@dataclass(frozen=True)
class Confusion:
    """Counts of (true label, predicted class) over a dataset; rows are the true labels."""

    target: str
    matrix: np.ndarray  # [classes, classes], int64

    def table(self) -> str:
        """The matrix as aligned text, with a header row of predicted classes."""
        n = self.matrix.shape[0]
        width = max(len(str(int(self.matrix.max(initial=0)))), len(str(n - 1)), 3)
        head = " " * (width + 2) + " ".join(f"{c:>{width}}" for c in range(n))
        rows = [
            f"{t:>{width}}  " + " ".join(f"{int(v):>{width}}" for v in self.matrix[t])
            for t in range(n)
        ]
        return "\n".join(
            [f"confusion matrix of `{self.target}` (rows: true, columns: predicted)", head, *rows]
        )


def classifier_head(model: CheckedModel) -> tuple[int, str, int] | None:
    """(logits node id, int target name, class count) of a classifier, else None.

    A classifier is a model whose loss or a metric applies cross_entropy, nll or
    an accuracy to logits [..., C] and an int target [...] (a sequence model counts
    every position); the loss's pair comes first.
    """
    classes = label_classes(model)
    order = [model.loss] if model.loss is not None else []
    order += [nid for _, nid in model.metrics]
    order += [n.id for n in model.nodes if n.op == "fn"]
    for nid in order:
        node = model.nodes[nid]
        if node.op != "fn" or len(node.inputs) < 2:
            continue
        labels = model.nodes[node.inputs[1]]
        name = labels.attrs.get("name") if labels.op == "target" else None
        if name in classes:
            logits = model.nodes[node.inputs[0]]
            # Logits [..., C] against labels [...]: per example, or per position of a sequence.
            shape = (*labels.type.shape, classes[name])
            if tuple(logits.type.shape) == shape:
                return node.inputs[0], name, classes[name]
    return None


def confusion_matrix(
    model: CheckedModel | str,
    checkpoint: str,
    data: str | None = None,
    *,
    device: str | None = "cpu",
    batch_size: int = 256,
) -> Confusion | None:
    """The confusion matrix of a classifier's checkpoint on a dataset; None for other models."""
    import dataclasses

    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_inference
    from dslc.runtime.session import make_session

    m = _model(model)
    head = classifier_head(m)
    if head is None:
        return None
    logits_id, target, n = head
    probe = dataclasses.replace(m, outputs=(("logits", logits_id),))
    sess = make_session(to_onnx(build_inference(probe)), resolve_device(device))
    state = checkpoint_state(m, checkpoint)
    ds = load_data(m, data)
    needed = [i.name for i in sess.get_inputs()]
    counts = np.zeros((n, n), dtype=np.int64)
    labels = ds.arrays[target]
    for start in range(0, len(ds), batch_size):
        feeds = {
            k: (ds.arrays[k][start : start + batch_size] if k in ds.arrays else state[k])
            for k in needed
        }
        (logits,) = sess.run(["logits"], feeds)
        pred = np.argmax(logits, axis=-1).reshape(-1)
        np.add.at(counts, (labels[start : start + batch_size].reshape(-1), pred), 1)
    return Confusion(target, counts)


def plot(run_dir: str, out: str | None = None) -> str:
    """Draw RUN/metrics.jsonl (loss and metrics per epoch) as a PNG; returns its path."""
    from dslc.runtime.checkpoint import write_atomic
    from dslc.runtime.plot import png_bytes, render
    from dslc.runtime.records import METRICS, read_metrics

    path = os.path.join(run_dir, METRICS)
    if not os.path.isfile(path):
        raise DslcError(f"{run_dir}: no {METRICS} here", hint="pass the --out folder of a run")
    target = out or os.path.join(run_dir, "metrics.png")
    write_atomic(target, png_bytes(render(read_metrics(path))))
    return target


def export(model: CheckedModel | str, checkpoint: str | None, path: str) -> str:
    """Write the inference model with the checkpoint's weights embedded; returns `path`.

    Inputs and outputs carry the declared names, with a dynamic batch dimension
    first; dropout is off and BatchNorm uses its running statistics. Without a
    checkpoint the initial parameters are embedded.
    """
    from dslc.emit_onnx import save, to_onnx
    from dslc.lower import initial_state

    m = _model(model)
    if not m.outputs:
        raise DslcError(
            f"model {m.name} declares no `output`, so its inference model would compute nothing",
            hint="add e.g. `output probs = softmax(logits)` to the model",
        )
    state = checkpoint_state(m, checkpoint) if checkpoint else initial_state(m, m.train.seed)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    save(to_onnx(*_inference(m, state)), path)
    return path


def gradcheck(
    model: CheckedModel | str, *, batch: int = 4, seed: int = 0, samples: int = 6
) -> list[GradRow]:
    """Each parameter's compiled gradient against central finite differences (float64)."""
    return _gradcheck(_model(model), batch=batch, seed=seed, samples=samples)
