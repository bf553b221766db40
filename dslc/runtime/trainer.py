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
from dslc.runtime.data import Dataset, load_dataset, model_dir, split, symbolic_dims
from dslc.runtime.guard import PROBE, add_finite_probe, diagnose, nonfinite_key, slot_diverged
from dslc.runtime.progress import Progress
from dslc.runtime.records import (
    METRICS,
    append_metrics,
    sha256_arrays,
    truncate_metrics,
    write_run_record,
)
from dslc.runtime.session import EvalRunner, StepRunner, resolve_device

Callback = Callable[[dict[str, Any]], Any]
"""Called with each epoch's metrics record; returning True stops training."""

StepCallback = Callable[[dict[str, Any]], Any]
"""Called after every optimiser step with `{epoch, batch, step, loss, <metrics>, lr}`."""

EVAL_BATCH = 256
RESIDENT_MAX_BYTES = 2 << 30  # a larger dataset stays on the host; batches are copied per step


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
    checkpoint_every: int | None = None  # also write last.safetensors every N steps
    resident: bool | None = None  # dataset on the device; None: on CUDA when it fits
    command: tuple[str, ...] | None = None  # the command line, for run.json


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
    best_epoch: int | None = None
    restored_best: bool = False  # `state` holds the best epoch's parameters (restore_best)


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
    base_dir = model_dir(model)
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


def _settings(model: CheckedModel, opts: TrainOptions, plan: _Plan, device: str) -> dict[str, Any]:
    """The resolved settings of a run, as run.json records them."""
    cfg = model.train
    es = cfg.early_stopping
    return _plain(
        {
            "data": opts.data or cfg.data,
            "validation": cfg.validation,
            "epochs": plan.epochs,
            "steps": plan.total_steps,
            "batch_size": plan.batch,
            "batches_per_epoch": plan.batches_per_epoch,
            "seed": plan.seed,
            "shuffle": plan.shuffle,
            "optimizer": {"name": cfg.optimizer.kind, **dict(cfg.optimizer.options)},
            "schedule": {"name": cfg.schedule.kind, **dict(cfg.schedule.options)},
            "early_stopping": vars(es) if es is not None else None,
            "device_requested": opts.device or cfg.device,
            "device": device,
            "threads": opts.threads,
            "checkpoint_every": opts.checkpoint_every,
            "init": opts.init,
            "train_examples": len(plan.train),
            "val_examples": len(plan.val) if plan.val is not None else 0,
        }
    )


def _plain(v: Any) -> Any:
    """JSON-ready copy: tuples to lists, unknown objects to their text."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _resident(opts: TrainOptions, device: str, arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether the training data lives on the device (CUDA, when it fits) for the whole run."""
    if opts.resident is not None:
        return opts.resident
    return device == "cuda" and sum(a.nbytes for a in arrays.values()) <= RESIDENT_MAX_BYTES


def _clean_temp_files(run_dir: str) -> None:
    # A process killed while writing a checkpoint leaves its temporary file behind.
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            if name.startswith(".tmp-"):
                try:
                    os.unlink(os.path.join(run_dir, name))
                except OSError:
                    pass


def _step_graphs(model: CheckedModel, plan: _Plan) -> dict[int, bytes]:
    """One training step per distinct batch size, with the finite-state probe output."""
    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_train_step

    dims = symbolic_dims(plan.train, model)
    sizes = {plan.batch, len(plan.train) - (plan.batches_per_epoch - 1) * plan.batch}
    return {
        b: to_onnx(
            add_finite_probe(
                build_train_step(model, batch=b, dims=dims, total_steps=plan.total_steps)
            )
        ).SerializeToString()
        for b in sorted(sizes, reverse=True)
    }


def train(
    model: CheckedModel,
    opts: TrainOptions = TrainOptions(),
    callbacks: Sequence[Callback] = (),
    stream: TextIO | None = None,
    step_callbacks: Sequence[StepCallback] = (),
) -> TrainResult:
    """Train `model` as its train block and `opts` say; returns the history and final state.

    `callbacks` get each epoch's record (returning True stops training after that
    epoch); `step_callbacks` get `{epoch, batch, step, loss, <metrics>, lr}` after
    every optimiser step. A non-finite loss or state raises `TrainingDiverged`.
    """
    from dslc.emit_onnx import to_onnx
    from dslc.lower import build_eval_step, initial_state, optimizer_state

    if opts.resume and opts.init:
        raise DslcError("--resume and --init cannot be used together")
    if opts.checkpoint_every is not None and opts.checkpoint_every < 1:
        raise DslcError(f"--checkpoint-every must be at least 1, got {opts.checkpoint_every}")
    plan = plan_run(model, opts)
    progress = Progress(stream, enabled=opts.progress)
    device = resolve_device(
        opts.device or model.train.device, say=lambda line: print(line, file=progress.stream)
    )
    monitor, mode, es = _monitor(model, plan.val is not None)
    run_dir = opts.out or os.path.join("runs", model.name)
    last_path = os.path.join(run_dir, "last.safetensors")
    best_path = os.path.join(run_dir, "best.safetensors")
    final_path = os.path.join(run_dir, "final.safetensors")
    metrics_path = os.path.join(run_dir, METRICS)

    state = {**initial_state(model, plan.seed), **optimizer_state(model)}
    resumed = _Resumed()
    if opts.init:
        state.update(load_init(opts.init, model))
    if opts.resume:
        resumed = _resume(model, last_path, state, plan.batch, plan.seed)
    else:
        # A fresh run replaces the folder's run: a stale last.safetensors must not be resumed.
        for stale in (metrics_path, last_path, best_path, final_path):
            if os.path.exists(stale):
                os.unlink(stale)
    os.makedirs(run_dir, exist_ok=True)
    _clean_temp_files(run_dir)
    history: list[dict[str, Any]] = (
        truncate_metrics(metrics_path, int(state["step"])) if opts.resume else []
    )
    digests = {"train": sha256_arrays(plan.train.arrays)}
    if plan.val is not None:
        digests["validation"] = sha256_arrays(plan.val.arrays)
    write_run_record(
        run_dir,
        model.file,
        _settings(model, opts, plan, device),
        digests,
        data_sources=[plan.train.source, *([plan.val.source] if plan.val is not None else [])],
        device=device,
        command=opts.command,
        resume=opts.resume,
    )

    runner = StepRunner(
        _step_graphs(model, plan), state, seed=plan.seed, device=device, threads=opts.threads
    )
    if _resident(opts, device, plan.train.arrays):
        runner.make_resident(plan.train.arrays)
    report_names = ["loss", *(m for m, _ in model.metrics)]
    evaluator = None
    if plan.val is not None:
        val_dims = symbolic_dims(plan.val, model)
        evaluator = EvalRunner(
            lambda b: to_onnx(build_eval_step(model, batch=b, dims=val_dims)).SerializeToString(),
            device=device,
            threads=opts.threads,
        )

    best, wait, best_epoch = resumed.best, resumed.wait, resumed.best_epoch

    def meta(epoch: int, pos: int, partial: Mapping[str, Any] | None = None) -> dict[str, str]:
        return {
            "model": model.name,
            "epoch": str(epoch),
            "position": str(pos),
            "best": json.dumps(best),
            "best_epoch": json.dumps(best_epoch),
            "monitor": monitor,
            "mode": mode,
            "wait": str(wait),
            "seed": str(plan.seed),
            "total_steps": str(plan.total_steps),
            "batch_size": str(plan.batch),
            "partial": json.dumps(partial) if partial else "",
            **plan.train.meta,  # a text dataset's vocabulary, for `dslc sample`
        }

    if not opts.resume:
        # From the first moment on, RUN holds a loadable state that --resume can continue.
        save_checkpoint(last_path, {**state, **runner.state()}, meta(0, 0))
    best_state: dict[str, np.ndarray] | None = None
    stopped_early = es is not None and wait >= es.patience
    if stopped_early:
        progress.message(f"early stopping: {monitor} had already stopped improving; nothing to do")
    step = runner.step_count
    arrays = plan.train.arrays
    every = opts.checkpoint_every
    lr = float("nan")
    completed = resumed.epoch
    for epoch in range(resumed.epoch, plan.epochs):
        if step >= plan.total_steps or stopped_early:
            break
        order = epoch_order(plan.seed, epoch, len(plan.train), plan.shuffle)
        first = resumed.position if epoch == resumed.epoch else 0
        carried = resumed.partial if epoch == resumed.epoch else None
        progress.start_epoch(epoch + 1, plan.epochs, plan.batches_per_epoch)
        sums = dict.fromkeys(report_names, 0.0)
        seen, prior_s = 0, 0.0
        if carried:
            # The part of this epoch trained before the checkpoint: its record covers all of it.
            sums.update({k: float(v) for k, v in carried["sums"].items() if k in sums})
            seen, prior_s = int(carried["seen"]), float(carried["train_s"])
            lr = float(carried.get("lr", lr))
        done = first
        t0 = time.perf_counter()
        try:
            for k in range(first, plan.batches_per_epoch):
                idx = order[k * plan.batch : (k + 1) * plan.batch]
                out = runner.step_indices(arrays, idx)
                if not (math.isfinite(out["loss"]) and out.get(PROBE, 0.0) == 0.0):
                    _diverged(
                        model,
                        state,
                        runner,
                        plan,
                        out,
                        arrays,
                        idx,
                        step,
                        last_path,
                        meta(
                            epoch, k, _partial(sums, seen, lr, prior_s + time.perf_counter() - t0)
                        ),
                        progress,
                    )
                size = len(idx)
                seen += size
                for name in report_names:
                    sums[name] += out[name] * size
                lr = out.get("lr", lr)
                step += 1
                done = k + 1
                progress.update(done, sums["loss"] / seen, seen)
                if step_callbacks:
                    info = {
                        "epoch": epoch + 1,
                        "batch": done,
                        "step": step,
                        **{n: out[n] for n in report_names},
                        "lr": out.get("lr", lr),
                    }
                    for cb in step_callbacks:
                        cb(info)
                if step >= plan.total_steps:
                    break
                if every and step % every == 0 and done < plan.batches_per_epoch:
                    save_checkpoint(
                        last_path,
                        _finite(model, {**state, **runner.state()}, step, last_path),
                        meta(
                            epoch,
                            done,
                            _partial(sums, seen, lr, prior_s + time.perf_counter() - t0),
                        ),
                    )
        except KeyboardInterrupt:
            # Keep what was learnt: the checkpoint records the position for --resume.
            save_checkpoint(
                last_path,
                {**state, **runner.state()},
                meta(epoch, done, _partial(sums, seen, lr, prior_s + time.perf_counter() - t0)),
            )
            raise
        train_s = prior_s + time.perf_counter() - t0
        finished = done == plan.batches_per_epoch
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        record.update({k: v / max(seen, 1) for k, v in sums.items()})
        # Merged over the initial state: a parameter the step graph does not use stays saved.
        current = _finite(model, {**state, **runner.state()}, step, last_path)
        if evaluator is not None and plan.val is not None:
            eval_batch = min(len(plan.val), max(plan.batch, EVAL_BATCH))
            val = evaluator.evaluate(current, plan.val.arrays, eval_batch, report_names)
            record.update({f"val_{k}": v for k, v in val.items()})
        # lr is a float32 in the graph: report its shortest decimal form, not 0.0020000000949.
        record["lr"] = float(str(np.float32(lr)))
        elapsed = prior_s + time.perf_counter() - t0
        record["time_s"] = round(elapsed, 4)
        record["samples_per_s"] = round(seen / max(train_s, 1e-9), 1)
        record = {k: (_jsonable(v) if isinstance(v, float) else v) for k, v in record.items()}

        value = record.get(monitor)
        pos_epoch, pos = (epoch + 1, 0) if finished else (epoch, done)
        # Only whole epochs count: a part ended by --steps and its rest after --resume are
        # not epochs of their own, so a split run stops where an uninterrupted one does.
        if finished:
            if value is not None and _improved(value, best, mode, es.min_delta if es else 0.0):
                best, wait, best_epoch = float(value), 0, epoch + 1
                best_state = current
                save_checkpoint(best_path, current, meta(pos_epoch, pos))
            else:
                wait += 1
        elif not os.path.exists(best_path):
            # No whole epoch yet (--steps ended the first one): the best so far is the last state.
            save_checkpoint(best_path, current, meta(pos_epoch, pos))
        completed = epoch + 1
        # The line first, then the checkpoint: a resume drops lines newer than its checkpoint.
        append_metrics(metrics_path, record)
        save_checkpoint(last_path, current, meta(pos_epoch, pos))
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
        stop = any(cb(dict(record)) is True for cb in callbacks)
        if not stop and es is not None and wait >= es.patience:
            stopped_early = stop = True
            progress.message(
                f"early stopping: {monitor} did not improve for {wait} epoch(s); "
                f"best {best} at epoch {best_epoch}"
            )
        if stop:
            break

    final = {**state, **runner.state()}
    restored = False
    if es is not None and es.restore_best and best is not None:
        if best_state is None and os.path.isfile(best_path):
            best_state = {**final, **load_checkpoint(best_path)[0]}
        if best_state is not None:
            final, restored = best_state, True
    save_checkpoint(
        final_path,
        state_for_eval(final),
        {
            "model": model.name,
            "source": "best" if restored else "last",
            "best_epoch": json.dumps(best_epoch),
        },
    )
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
        best_epoch=best_epoch,
        restored_best=restored,
    )


def _finite(
    model: CheckedModel, state: dict[str, np.ndarray], step: int, last_path: str
) -> dict[str, np.ndarray]:
    """`state` if every tensor is finite; else the optimiser slots overflowed: raise."""
    bad = nonfinite_key(state)
    if bad is not None:
        raise slot_diverged(model, bad, step, last_path)
    return state


def _diverged(
    model: CheckedModel,
    initial: Mapping[str, np.ndarray],
    runner: StepRunner,
    plan: _Plan,
    out: Mapping[str, float],
    arrays: Mapping[str, np.ndarray],
    idx: np.ndarray,
    step: int,
    last_path: str,
    meta: Mapping[str, str],
    progress: Progress,
) -> None:
    """Keep the last finite state in last.safetensors and raise where the divergence began."""
    new_state = runner.state()
    runner.rewind()  # the step's inputs are untouched in the other state set
    finite = {**initial, **runner.state()}
    # The probe covers parameters and buffers; slots that overflowed unseen since the last
    # checkpoint leave that checkpoint in place.
    if nonfinite_key(finite) is None:
        save_checkpoint(last_path, finite, meta)
    if progress.tty:
        progress.message("")  # end the progress bar's line
    batch = {n: np.take(arrays[n], idx, axis=0) for n in arrays}
    raise diagnose(
        model,
        step=step,
        loss=float(out["loss"]),
        state=finite,
        new_state=new_state,
        batch=batch,
        seed=plan.seed,
        checkpoint=last_path,
    )


def _partial(sums: Mapping[str, float], seen: int, lr: float, train_s: float) -> dict[str, Any]:
    """The epoch-so-far sums a mid-epoch checkpoint carries, so the epoch's record stays whole."""
    return {"sums": dict(sums), "seen": seen, "lr": lr, "train_s": train_s}


@dataclass(frozen=True)
class _Resumed:
    """Where a resumed run continues: epoch, position in it, best-so-far and the epoch's sums."""

    epoch: int = 0
    position: int = 0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    partial: dict[str, Any] | None = None


def _resume(
    model: CheckedModel, last_path: str, state: dict[str, np.ndarray], batch: int, seed: int
) -> _Resumed:
    """Load RUN/last.safetensors into `state`; returns where to continue."""
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
    if meta.get("seed", str(seed)) != str(seed):
        raise DslcError(
            f"--resume: {last_path} was trained with seed {meta['seed']}, this run uses {seed}",
            hint=f"resume with --seed {meta['seed']}: shuffling and dropout follow the seed",
        )
    try:
        partial = json.loads(meta["partial"]) if meta.get("partial") else None
        return _Resumed(
            epoch=int(meta.get("epoch", "0")),
            position=int(meta.get("position", "0")),
            best=json.loads(meta.get("best", "null")),
            best_epoch=json.loads(meta.get("best_epoch", "null")),
            wait=int(meta.get("wait", "0")),
            partial=partial if isinstance(partial, dict) else None,
        )
    except (ValueError, KeyError):
        raise DslcError(f"--resume: {last_path} has unreadable metadata") from None


def state_for_eval(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parameters and buffers only (the evaluation and inference graphs take no optimiser state)."""
    return {k: v for k, v in state.items() if not (k.startswith("opt.") or k in ("step", "seed"))}
