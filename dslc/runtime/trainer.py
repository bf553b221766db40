"""The training loop: epochs, seeded shuffling, validation, checkpoints, early stopping.

The shuffle of epoch `e` depends only on (seed, e), and a checkpoint records the
epoch and the position in it, so `--resume` continues exactly where a run
stopped. A RUN folder holds `last.safetensors`, `best.safetensors` and
`metrics.jsonl` (one JSON object per epoch).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from dslc.check.model import CheckedModel, EarlyStoppingSpec
from dslc.errors import DslcError
from dslc.runtime.checkpoint import load_checkpoint, load_init, model_state, save_checkpoint
from dslc.runtime.data import Dataset, load_dataset, split, symbolic_dims
from dslc.runtime.progress import Progress
from dslc.runtime.session import EvalRunner, StepRunner, resolve_device

Callback = Callable[[dict[str, Any]], Any]
"""Called with each epoch's metrics record; returning True stops training."""

EVAL_BATCH = 256


@dataclass(frozen=True)
class TrainOptions:
    """Command-line overrides of the `train { }` block; None keeps the file's setting."""

    data: str | None = None
    epochs: int | None = None
    steps: int | None = None
    device: str | None = None
    out: str | None = None
    init: str | None = None
    resume: bool = False
    batch_size: int | None = None
    seed: int | None = None
    threads: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    run_dir: str
    history: tuple[dict[str, Any], ...]
    state: dict[str, np.ndarray] = field(repr=False)
    steps: int
    epochs: int  # epochs completed (a partial last epoch counts when --steps ended it)
    best: float | None
    monitor: str
    stopped_early: bool
    device: str


@dataclass
class _Plan:
    train: Dataset
    val: Dataset | None
    batch: int
    batches_per_epoch: int
    epochs: int
    total_steps: int
    seed: int
    shuffle: bool


def epoch_order(seed: int, epoch: int, n: int, shuffle: bool) -> np.ndarray:
    """The example order of epoch `epoch` (0-based): a function of (seed, epoch) only."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def plan_run(model: CheckedModel, opts: TrainOptions) -> _Plan:
    """Resolve data, validation split, batch size, epochs and the schedule's total steps."""
    cfg = model.train
    if model.loss is None:
        raise DslcError(f"model {model.name} has no `loss`, so there is nothing to train")
    seed = cfg.seed if opts.seed is None else int(opts.seed)
    batch = cfg.batch_size if opts.batch_size is None else int(opts.batch_size)
    if batch < 1:
        raise DslcError(f"batch size must be at least 1, got {batch}")
    base_dir = os.path.dirname(os.path.abspath(model.file)) if model.file else os.getcwd()
    data = load_dataset(opts.data or cfg.data, model, base_dir)
    if isinstance(cfg.validation, str):
        train_ds, val = data, load_dataset(cfg.validation, model, base_dir)
    else:
        train_ds, val = split(data, float(cfg.validation), seed)
    n = len(train_ds)
    batch = min(batch, n)
    bpe = math.ceil(n / batch)
    if opts.steps is not None and opts.steps < 1:
        raise DslcError(f"--steps must be at least 1, got {opts.steps}")
    if opts.epochs is not None and opts.epochs < 1:
        raise DslcError(f"--epochs must be at least 1, got {opts.epochs}")
    if opts.steps is not None and opts.epochs is None:
        # --steps replaces the file's epoch count; with --epochs too, the earlier limit wins.
        epochs, total = math.ceil(opts.steps / bpe), int(opts.steps)
    else:
        epochs = cfg.epochs if opts.epochs is None else int(opts.epochs)
        total = epochs * bpe if opts.steps is None else min(int(opts.steps), epochs * bpe)
    return _Plan(train_ds, val, batch, bpe, epochs, total, seed, cfg.shuffle)


def _monitor(model: CheckedModel, has_val: bool) -> tuple[str, str, EarlyStoppingSpec | None]:
    es = model.train.early_stopping
    monitor = es.monitor if es else ("val_loss" if has_val else "loss")
    names = ["loss", *(m for m, _ in model.metrics)]
    allowed = names + ([f"val_{m}" for m in names] if has_val else [])
    if monitor not in allowed:
        hint = (
            "set `validation` in the train block to monitor validation metrics"
            if monitor.startswith("val_") and not has_val
            else "monitor one of: " + ", ".join(allowed)
        )
        raise DslcError(
            f"early stopping monitors `{monitor}`, which this run does not report", hint=hint
        )
    mode = es.mode if es else "auto"
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    return monitor, mode, es


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _jsonable(v: float) -> float | None:
    return v if math.isfinite(v) else None


def train(
    model: CheckedModel,
    opts: TrainOptions = TrainOptions(),
    callbacks: Sequence[Callback] = (),
    stream: TextIO | None = None,
) -> TrainResult:
    """Train `model` as its train block and `opts` say; returns the history and final state."""
    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_eval_step, build_train_step, initial_state, optimizer_state

    if opts.resume and opts.init:
        raise DslcError("--resume and --init cannot be used together")
    plan = plan_run(model, opts)
    progress = Progress(stream, enabled=opts.progress)
    device = resolve_device(
        opts.device or model.train.device, say=lambda line: print(line, file=progress.stream)
    )
    monitor, mode, es = _monitor(model, plan.val is not None)
    run_dir = opts.out or os.path.join("runs", model.name)
    last_path = os.path.join(run_dir, "last.safetensors")
    best_path = os.path.join(run_dir, "best.safetensors")
    metrics_path = os.path.join(run_dir, "metrics.jsonl")

    state = {**initial_state(model, plan.seed), **optimizer_state(model)}
    start_epoch, position, best, wait = 0, 0, None, 0
    if opts.init:
        state.update(load_init(opts.init, model))
    if opts.resume:
        start_epoch, position, best, wait = _resume(model, last_path, state, plan.batch)
    elif os.path.exists(metrics_path):
        os.unlink(metrics_path)
    os.makedirs(run_dir, exist_ok=True)

    dims = symbolic_dims(plan.train, model)
    graphs = {
        b: to_onnx(
            build_train_step(model, batch=b, dims=dims, total_steps=plan.total_steps)
        ).SerializeToString()
        for b in sorted(
            {plan.batch, len(plan.train) - (plan.batches_per_epoch - 1) * plan.batch}, reverse=True
        )
    }
    runner = StepRunner(graphs, state, seed=plan.seed, device=device, threads=opts.threads)
    report_names = ["loss", *(m for m, _ in model.metrics)]
    evaluator = None
    if plan.val is not None:
        val_dims = symbolic_dims(plan.val, model)
        evaluator = EvalRunner(
            lambda b: to_onnx(build_eval_step(model, batch=b, dims=val_dims)).SerializeToString(),
            device=device,
            threads=opts.threads,
        )

    def meta(epoch: int, pos: int) -> dict[str, str]:
        return {
            "model": model.name,
            "epoch": str(epoch),
            "position": str(pos),
            "best": json.dumps(best),
            "monitor": monitor,
            "wait": str(wait),
            "seed": str(plan.seed),
            "total_steps": str(plan.total_steps),
            "batch_size": str(plan.batch),
            **plan.train.meta,  # a text dataset's vocabulary, for `dslc sample`
        }

    history: list[dict[str, Any]] = []
    best_state: dict[str, np.ndarray] | None = None
    stopped_early = False
    step = runner.step_count
    arrays = plan.train.arrays
    epoch = start_epoch
    lr = float("nan")
    completed = start_epoch
    for epoch in range(start_epoch, plan.epochs):
        if step >= plan.total_steps:
            break
        order = epoch_order(plan.seed, epoch, len(plan.train), plan.shuffle)
        first = position if epoch == start_epoch else 0
        progress.start_epoch(epoch + 1, plan.epochs, plan.batches_per_epoch)
        sums = dict.fromkeys(report_names, 0.0)
        seen, done = 0, first
        t0 = time.perf_counter()
        try:
            for k in range(first, plan.batches_per_epoch):
                idx = order[k * plan.batch : (k + 1) * plan.batch]
                out = runner.step_indices(arrays, idx)
                size = len(idx)
                seen += size
                for name in report_names:
                    sums[name] += out[name] * size
                lr = out.get("lr", lr)
                step += 1
                done = k + 1
                progress.update(done, sums["loss"] / seen, seen)
                if step >= plan.total_steps:
                    break
        except KeyboardInterrupt:
            # Keep what was learnt: the checkpoint records the position for --resume.
            save_checkpoint(last_path, {**state, **runner.state()}, meta(epoch, done))
            raise
        train_s = time.perf_counter() - t0
        finished = done == plan.batches_per_epoch
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        record.update({k: v / max(seen, 1) for k, v in sums.items()})
        # Merged over the initial state: a parameter the step graph does not use stays saved.
        current = {**state, **runner.state()}
        if evaluator is not None and plan.val is not None:
            eval_batch = min(len(plan.val), max(plan.batch, EVAL_BATCH))
            val = evaluator.evaluate(current, plan.val.arrays, eval_batch, report_names)
            record.update({f"val_{k}": v for k, v in val.items()})
        # lr is a float32 in the graph: report its shortest decimal form, not 0.0020000000949.
        record["lr"] = float(str(np.float32(lr)))
        elapsed = time.perf_counter() - t0
        record["time_s"] = round(elapsed, 4)
        record["samples_per_s"] = round(seen / max(train_s, 1e-9), 1)
        record = {k: (_jsonable(v) if isinstance(v, float) else v) for k, v in record.items()}

        value = record.get(monitor)
        if value is not None and _improved(value, best, mode, es.min_delta if es else 0.0):
            best, wait = float(value), 0
            best_state = current
            save_checkpoint(
                best_path, current, meta(epoch + 1 if finished else epoch, 0 if finished else done)
            )
        else:
            wait += 1
        completed = epoch + 1
        save_checkpoint(
            last_path, current, meta(epoch + 1 if finished else epoch, 0 if finished else done)
        )
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        history.append(record)
        shown = {
            k: v for k, v in record.items() if k not in ("epoch", "step", "time_s", "samples_per_s")
        }
        progress.end_epoch(
            done,
            {k: (v if v is not None else float("nan")) for k, v in shown.items()},
            elapsed,
            record["samples_per_s"],
        )
        if any(cb(dict(record)) is True for cb in callbacks):
            break
        if es is not None and wait >= es.patience:
            stopped_early = True
            progress.message(f"early stopping: {monitor} did not improve for {wait} epoch(s)")
            break

    final = {**state, **runner.state()}
    if stopped_early and es is not None and es.restore_best and best_state is not None:
        final = best_state
    return TrainResult(
        run_dir=run_dir,
        history=tuple(history),
        state=final,
        steps=step,
        epochs=completed,
        best=best,
        monitor=monitor,
        stopped_early=stopped_early,
        device=device,
    )


def _resume(
    model: CheckedModel, last_path: str, state: dict[str, np.ndarray], batch: int
) -> tuple[int, int, Any, int]:
    """Load RUN/last.safetensors into `state`; returns (epoch, position, best, wait)."""
    if not os.path.isfile(last_path):
        raise DslcError(
            f"--resume: {last_path} not found", hint="train without --resume first, or set --out"
        )
    tensors, meta = load_checkpoint(last_path)
    if meta.get("model", model.name) != model.name:
        raise DslcError(f"--resume: {last_path} belongs to model {meta['model']}, not {model.name}")
    state.update(model_state(model, tensors, last_path))
    for key in state:
        if key.startswith("opt.") or key == "step":
            if key not in tensors:
                raise DslcError(
                    f"--resume: {last_path} has no `{key}` (was it trained with another optimiser?)"
                )
            if tuple(tensors[key].shape) != tuple(state[key].shape):
                raise DslcError(
                    f"--resume: `{key}` has shape {list(tensors[key].shape)}, "
                    f"expected {list(state[key].shape)}"
                )
            state[key] = tensors[key].astype(state[key].dtype)
    if meta.get("batch_size", str(batch)) != str(batch):
        raise DslcError(
            f"--resume: {last_path} was trained with batch size {meta['batch_size']}, "
            f"this run uses {batch}",
            hint="resume with the same --batch-size, so the position in the epoch means the same",
        )
    try:
        epoch, position = int(meta.get("epoch", "0")), int(meta.get("position", "0"))
        best = json.loads(meta.get("best", "null"))
        wait = int(meta.get("wait", "0"))
    except ValueError:
        raise DslcError(f"--resume: {last_path} has unreadable metadata") from None
    return epoch, position, best, wait


def state_for_eval(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parameters and buffers only (the evaluation and inference graphs take no optimiser state)."""
    return {k: v for k, v in state.items() if not (k.startswith("opt.") or k in ("step", "seed"))}
