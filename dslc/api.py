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

import numpy as np

from dslc.check.model import CheckedModel
from dslc.errors import DslcError
from dslc.runtime.checkpoint import load_checkpoint, model_state, save_checkpoint
from dslc.runtime.data import Dataset, load_dataset, symbolic_dims
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
    "Dataset",
    "GradRow",
    "TrainResult",
    "TrainingDiverged",
    "compile",
    "evaluate",
    "export",
    "gradcheck",
    "load",
    "load_data",
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


def _base_dir(model: CheckedModel) -> str:
    return os.path.dirname(os.path.abspath(model.file)) if model.file else os.getcwd()


def load_data(model: CheckedModel | str, data: str | None = None) -> Dataset:
    """The dataset `data` (default: the train block's) bound to the model's inputs and targets."""
    m = _model(model)
    return load_dataset(data or m.train.data, m, _base_dir(m))


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
            n -= min(max(int(round(n * float(cfg.validation))), 1), n - 1) if cfg.validation else 0
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


def export(model: CheckedModel | str, checkpoint: str | None, path: str) -> str:
    """Write the inference model with the checkpoint's weights embedded; returns `path`.

    Inputs and outputs carry the declared names, with a dynamic batch dimension
    first; dropout is off and BatchNorm uses its running statistics. Without a
    checkpoint the initial parameters are embedded.
    """
    from dslc.emit_onnx import save, to_onnx
    from dslc.lower import initial_state

    m = _model(model)
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
