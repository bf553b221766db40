"""ONNX Runtime sessions and the training-step runner.

The step runner keeps the whole training state (parameters, buffers,
optimiser slots, `step`) in two pre-allocated state sets, each with its own
pre-bound IOBinding per batch size: inputs from set A, outputs into set B,
swapped every step (docs/architecture.md, the training-step contract). Only the
batch changes between steps, and on the CPU even that needs no rebinding: the
batch inputs are bound once to numpy buffers that the runner fills in place.
One session per distinct batch size, because a fixed batch dimension is faster
than a symbolic one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np
import onnxruntime as ort

from dslc.errors import DslcError

DEVICES = ("auto", "cpu", "cuda")
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


# ---------------------------------------------------------------- devices and sessions


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether a CUDA session really initialises (onnxruntime-gpu lists CUDA even without it)."""
    if _CUDA not in ort.get_available_providers():
        return False
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    # A failed CUDA load prints a long error through ORT's logger; silence it for the probe.
    ort.set_default_logger_severity(4)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=[_CUDA, _CPU])
        return _CUDA in sess.get_providers()
    except Exception:  # noqa: BLE001 - any failure means "no usable CUDA"
        return False
    finally:
        ort.set_default_logger_severity(3)


def resolve_device(requested: str | None, *, say: Callable[[str], None] | None = None) -> str:
    """`cpu` or `cuda` for a requested `auto|cpu|cuda`; `auto` falls back to CPU with one line."""
    req = (requested or "auto").lower()
    if req not in DEVICES:
        raise DslcError(f"unknown device `{requested}`", hint="use auto, cpu or cuda")
    if req == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if req == "cuda":
        raise DslcError(
            "CUDA was requested but its execution provider does not initialise on this machine",
            hint="use --device cpu or --device auto",
        )
    (say or _stderr)("dslc: CUDA not available, using CPU")
    return "cpu"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def default_threads(batch: int) -> int:
    """Intra-op threads: 1 below batch 256, where thread hand-off costs more than it saves.

    Measured on an otherwise idle 2-core machine (docs/benchmarks.md): at batch
    32–128 one thread beat two for the digits CNN (72k vs 59k samples/s at 32)
    and tied for the MLP and LSTM; from batch 256 two threads won for the MLP
    (750k vs 557k) and LSTM (90k vs 71k) and tied for the CNN. `--threads` overrides.
    """
    cores = os.cpu_count() or 1
    return 1 if batch < 256 else max(1, min(cores, 8))


def make_session(
    model: bytes | object, device: str = "cpu", threads: int | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime session for a serialized model (or ModelProto) on `cpu` or `cuda`."""
    blob = model if isinstance(model, bytes | bytearray) else model.SerializeToString()  # type: ignore[attr-defined]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    providers = [_CUDA, _CPU] if device == "cuda" else [_CPU]
    return ort.InferenceSession(bytes(blob), opts, providers=providers)


def input_dtype(arg: ort.NodeArg) -> np.dtype:
    try:
        return np.dtype(_ORT_DTYPES[arg.type])
    except KeyError:
        raise DslcError(f"unsupported ONNX input type {arg.type} for `{arg.name}`") from None


# ---------------------------------------------------------------- the training-step runner


class StepRunner:
    """Drives a training-step graph with ping-pong state sets and pre-bound IOBindings.

    `graphs` maps each batch size to its step model (fixed batch dimension).
    `state` holds every stateful input (those with a `<name>.next` output):
    parameters, buffers, optimiser slots and `step`.
    """

    def __init__(
        self,
        graphs: Mapping[int, bytes | object],
        state: Mapping[str, np.ndarray],
        *,
        seed: int = 0,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        self.device = device
        self._threads = threads
        self._sessions: dict[int, ort.InferenceSession] = {}
        self._bindings: dict[int, tuple[ort.IOBinding, ort.IOBinding]] = {}
        self._batch_bufs: dict[int, dict[str, np.ndarray]] = {}
        self._batch_vals: dict[int, dict[str, ort.OrtValue]] = {}
        self._keep: list[object] = []  # numpy buffers behind non-owning OrtValues
        # A dataset kept on the device (make_resident): Gather graphs fill the batch inputs.
        self._gathers: dict[int, tuple[ort.InferenceSession, ort.IOBinding, np.ndarray]] = {}
        self._resident_src: dict[str, int] = {}
        self._cur = 0
        first = next(iter(graphs.values()))
        sess0 = make_session(first, device, threads or default_threads(next(iter(graphs))))
        outs = [o.name for o in sess0.get_outputs()]
        ins = sess0.get_inputs()
        out_set = set(outs)
        self.state_names: tuple[str, ...] = tuple(
            i.name for i in ins if f"{i.name}.next" in out_set
        )
        self.report_names: tuple[str, ...] = tuple(o for o in outs if not o.endswith(".next"))
        fixed = {i.name for i in ins} - set(self.state_names)
        self.data_names: tuple[str, ...] = tuple(
            i.name for i in ins if i.name in fixed and i.name != "seed"
        )
        missing = [n for n in self.state_names if n not in state]
        if missing:
            raise DslcError(f"training state lacks `{missing[0]}`")
        self._dtypes = {i.name: input_dtype(i) for i in ins}
        self._sets = [self._alloc_state(state), self._alloc_state(state)]
        self._seed_val = self._ortvalue(np.array(seed, dtype=np.int64))
        out_types = {o.name: _ORT_DTYPES.get(o.type, np.float32) for o in sess0.get_outputs()}
        # Scalar outputs land in numpy buffers bound once: reading them back costs nothing.
        self._report_arrays = [np.zeros((), dtype=out_types[n]) for n in self.report_names]
        self._reports = [self._ortvalue(a) for a in self._report_arrays]
        for batch, g in graphs.items():
            sess = (
                sess0 if g is first else make_session(g, device, threads or default_threads(batch))
            )
            self._add(batch, sess)

    # -------- allocation

    def _ortvalue(self, arr: np.ndarray) -> ort.OrtValue:
        """An OrtValue holding `arr`: over a kept numpy buffer on CPU, device memory on CUDA."""
        if not arr.flags.c_contiguous:  # (ascontiguousarray would turn a 0-d array into 1-d)
            arr = arr.copy(order="C")
        if self.device == "cpu":
            self._keep.append(arr)
            return ort.OrtValue.ortvalue_from_numpy(arr)
        val = ort.OrtValue.ortvalue_from_shape_and_type(list(arr.shape), arr.dtype.type, "cuda", 0)
        val.update_inplace(arr)
        return val

    def _alloc_state(self, state: Mapping[str, np.ndarray]) -> dict[str, ort.OrtValue]:
        return {
            n: self._ortvalue(np.array(state[n], dtype=self._dtypes[n], copy=True))
            for n in self.state_names
        }

    def _add(self, batch: int, sess: ort.InferenceSession) -> None:
        bufs: dict[str, np.ndarray] = {}
        vals: dict[str, ort.OrtValue] = {}
        for arg in sess.get_inputs():
            if arg.name in self.data_names:
                shape = arg.shape
                if not all(isinstance(d, int) for d in shape):
                    raise DslcError(f"step graph input `{arg.name}` has a non-fixed shape {shape}")
                buf = np.zeros(shape, dtype=input_dtype(arg))
                bufs[arg.name] = buf
                vals[arg.name] = self._ortvalue(buf)
        pair = []
        for src, dst in ((0, 1), (1, 0)):
            b = sess.io_binding()
            for n in self.state_names:
                b.bind_ortvalue_input(n, self._sets[src][n])
                b.bind_ortvalue_output(f"{n}.next", self._sets[dst][n])
            if "seed" in self._dtypes:
                b.bind_ortvalue_input("seed", self._seed_val)
            for n, v in vals.items():
                b.bind_ortvalue_input(n, v)
            for n, v in zip(self.report_names, self._reports, strict=True):
                b.bind_ortvalue_output(n, v)
            pair.append(b)
        self._sessions[batch] = sess
        self._bindings[batch] = (pair[0], pair[1])
        self._batch_bufs[batch] = bufs
        self._batch_vals[batch] = vals

    # -------- running

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(self._sessions)

    def make_resident(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Keep the dataset on the runner's device; batches are then gathered there.

        Each batch size gets a small Gather graph whose outputs are bound to the
        step's batch inputs, so a step moves only the int64 index vector from the
        host. `step_indices` with these same arrays then uses it.
        """
        import onnx
        from onnx import helper

        self._resident = {n: self._ortvalue(np.asarray(arrays[n])) for n in self.data_names}
        self._resident_src = {n: id(arrays[n]) for n in self.data_names}
        self._gathers = {}
        for batch in self._sessions:
            index_info = helper.make_tensor_value_info("index", onnx.TensorProto.INT64, [batch])
            nodes, ins, outs = [], [index_info], []
            for n in self.data_names:
                arr = np.asarray(arrays[n])
                elem = helper.np_dtype_to_tensor_dtype(self._dtypes[n])
                ins.append(helper.make_tensor_value_info(f"all.{n}", elem, list(arr.shape)))
                outs.append(helper.make_tensor_value_info(n, elem, [batch, *arr.shape[1:]]))
                nodes.append(helper.make_node("Gather", [f"all.{n}", "index"], [n], axis=0))
            graph = helper.make_graph(nodes, "gather", ins, outs)
            proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            proto.ir_version = 9
            onnx.checker.check_model(proto)
            gsess = make_session(proto.SerializeToString(), self.device, 1)
            index = np.zeros(batch, dtype=np.int64)
            self._keep.append(index)
            binding = gsess.io_binding()
            binding.bind_ortvalue_input("index", ort.OrtValue.ortvalue_from_numpy(index))
            for n in self.data_names:
                binding.bind_ortvalue_input(f"all.{n}", self._resident[n])
                binding.bind_ortvalue_output(n, self._batch_vals[batch][n])
            self._gathers[batch] = (gsess, binding, index)

    def step_indices(self, arrays: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, float]:
        """One optimiser step on the examples `arrays[...][index]`; returns loss, metrics and lr."""
        batch = len(index)
        bufs = self._batch_bufs[batch]
        gathers = self._gathers
        if gathers and all(id(arrays[n]) == i for n, i in self._resident_src.items()):
            gsess, binding, buf = gathers[batch]
            buf[:] = index
            gsess.run_with_iobinding(binding)
        elif self.device == "cpu":
            for n, buf in bufs.items():
                np.take(arrays[n], index, axis=0, out=buf)
        else:
            vals = self._batch_vals[batch]
            for n, buf in bufs.items():
                np.take(arrays[n], index, axis=0, out=buf)
                vals[n].update_inplace(buf)
        return self._run(batch)

    def step(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
        """One optimiser step on a batch given as arrays keyed by input/target name."""
        size = next(iter(batch.values())).shape[0]
        bufs = self._batch_bufs.get(size)
        if bufs is None:
            raise DslcError(f"no step graph for batch size {size} (have {list(self._sessions)})")
        for n, buf in bufs.items():
            np.copyto(buf, batch[n], casting="same_kind")
            if self.device != "cpu":
                self._batch_vals[size][n].update_inplace(buf)
        return self._run(size)

    def _run(self, batch: int) -> dict[str, float]:
        self._sessions[batch].run_with_iobinding(self._bindings[batch][self._cur])
        self._cur ^= 1
        if self.device == "cpu":
            return {
                n: float(a) for n, a in zip(self.report_names, self._report_arrays, strict=True)
            }
        return {n: float(v.numpy()) for n, v in zip(self.report_names, self._reports, strict=True)}

    # -------- state

    def rewind(self) -> None:
        """Go back to the state before the last step (still intact in the other set)."""
        self._cur ^= 1

    def state(self) -> dict[str, np.ndarray]:
        """A numpy copy of the current training state (for checkpoints and evaluation)."""
        cur = self._sets[self._cur]
        return {n: np.array(cur[n].numpy(), copy=True) for n in self.state_names}

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Overwrite (part of) the current state in place; the bindings stay valid."""
        cur = self._sets[self._cur]
        for n, arr in state.items():
            if n in cur:
                cur[n].update_inplace(np.array(arr, dtype=self._dtypes[n], order="C"))

    @property
    def step_count(self) -> int:
        return int(self._sets[self._cur]["step"].numpy()) if "step" in self.state_names else 0


# ---------------------------------------------------------------- the evaluation runner


class EvalRunner:
    """Runs an evaluation-step graph over a dataset in batches; one session per batch size."""

    def __init__(
        self,
        build: Callable[[int], bytes | object],
        *,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        self._build = build
        self._device = device
        self._threads = threads
        self._sessions: dict[int, ort.InferenceSession] = {}

    def session(self, batch: int) -> ort.InferenceSession:
        sess = self._sessions.get(batch)
        if sess is None:
            sess = make_session(
                self._build(batch), self._device, self._threads or default_threads(batch)
            )
            self._sessions[batch] = sess
        return sess

    def evaluate(
        self,
        state: Mapping[str, np.ndarray],
        arrays: Mapping[str, np.ndarray],
        batch: int,
        names: Sequence[str],
    ) -> dict[str, float]:
        """Batch-size-weighted means of the scalar outputs `names` over all examples."""
        n = next(iter(arrays.values())).shape[0]
        totals = dict.fromkeys(names, 0.0)
        for start in range(0, n, batch):
            size = min(batch, n - start)
            sess = self.session(size)
            feeds = {}
            for arg in sess.get_inputs():
                src = state if arg.name in state else arrays
                if arg.name not in src:
                    raise DslcError(f"evaluation needs `{arg.name}`, which the data and state lack")
                value = src[arg.name]
                feeds[arg.name] = value[start : start + size] if src is arrays else value
            outs = sess.run(list(names), feeds)
            for k, v in zip(names, outs, strict=True):
                totals[k] += float(v) * size
        return {k: v / n for k, v in totals.items()}
