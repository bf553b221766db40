"""Convolution, pooling, normalisation and dropout layers trained against PyTorch.

Each case is a small `.nn` model: the training step runs through ONNX Runtime
for several optimiser steps from the same initial parameters as a PyTorch
re-implementation of the checked model (torch.nn.functional), and losses,
gradients, parameters and BatchNorm running buffers are compared. A whole
CNN trained with `dslc.api.train` and its exported inference model are
compared the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from dslc.check import check_source
from dslc.check.model import CheckedModel
from dslc.emit_onnx import to_onnx
from dslc.lower import build_train_step, initial_state, optimizer_state, state_layout
from dslc.lower.dropout import application_key, keep_mask

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

# ---------------------------------------------------------------- PyTorch re-implementation


def _conv(x: Any, w: Any, bias: Any, a: Mapping[str, Any]) -> Any:
    pads = a["padding"]
    sym = all(p[0] == p[1] for p in pads)
    if not sym:
        # F.pad lists the last dimension first.
        x = F.pad(x, [v for p in reversed(pads) for v in p])
    fn = F.conv1d if x.ndim == 3 else F.conv2d
    return fn(x, w, bias, stride=a["stride"], padding=tuple(p[0] for p in pads) if sym else 0,
              dilation=a["dilation"], groups=a["groups"])


def torch_layer(model: CheckedModel, node: Any, x: Any, p: Mapping[str, Any], mode: str,
                seed: int, step: int) -> Any:
    """One layer application, written with torch.nn.functional."""
    layer = model.layers[node.attrs["layer"]]
    a, kind, name = layer.args, layer.kind, layer.name
    two_d = x.ndim == 4
    if kind in ("Conv1D", "Conv2D"):
        return _conv(x, p[f"{name}.weight"], p.get(f"{name}.bias"), a)
    if kind == "Dense":
        return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))
    if kind == "MaxPool":
        fn = F.max_pool2d if two_d else F.max_pool1d
        return fn(x, a["kernel"], a["stride"], a["padding"])
    if kind == "AvgPool":
        fn = F.avg_pool2d if two_d else F.avg_pool1d
        return fn(x, a["kernel"], a["stride"], a["padding"])
    if kind == "GlobalAvgPool":
        return x.mean(dim=tuple(range(2, x.ndim)))
    if kind == "Flatten":
        return x.flatten(1)
    if kind == "BatchNorm":
        return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"],
                            p[f"{name}.weight"], p[f"{name}.bias"], training=mode == "train",
                            momentum=a["momentum"], eps=a["eps"])
    if kind == "LayerNorm":
        return F.layer_norm(x, (x.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], a["eps"])
    if kind == "Dropout":
        if mode != "train" or a["rate"] == 0:
            return x
        mask = keep_mask(seed, step, application_key(name, node.id), tuple(x.shape), a["rate"])
        return x * torch.from_numpy(mask).float().div_(1 - a["rate"])
    raise NotImplementedError(kind)


TORCH_FNS: dict[str, Callable[..., Any]] = {
    "relu": lambda x: F.relu(x),
    "tanh": torch.tanh,
    "flatten": lambda x: x.flatten(1),
    "reshape": lambda x, shape: x.reshape(x.shape[0], *shape),
    "softmax": lambda x, axis=-1: F.softmax(x, dim=axis if axis < 0 else axis + 1),
    "cross_entropy": lambda z, y, label_smoothing=0.0: F.cross_entropy(
        z, y, label_smoothing=label_smoothing),
    "mse": F.mse_loss,
    "accuracy": lambda z, y: (z.argmax(-1) == y).float().mean(),
}


def torch_forward(model: CheckedModel, p: Mapping[str, Any], data: Mapping[str, Any], mode: str,
                  seed: int = 0, step: int = 0) -> dict[int, Any]:
    """Every node of the checked model's dataflow graph, evaluated with torch."""
    vals: dict[int, Any] = {}
    for n in model.nodes:
        ins = [vals[i] for i in n.inputs]
        if n.op in ("input", "target"):
            vals[n.id] = data[n.attrs["name"]]
        elif n.op == "layer":
            vals[n.id] = torch_layer(model, n, ins[0], p, mode, seed, step)
        elif n.op == "fn":
            vals[n.id] = TORCH_FNS[n.attrs["name"]](*ins, **n.attrs["kwargs"])
        elif n.op == "const":
            vals[n.id] = torch.tensor(float(n.attrs["value"]))
        elif n.op == "binop":
            a, c = ins
            vals[n.id] = {"+": a + c, "-": a - c, "*": a * c, "/": a / c}[n.attrs["op"]]
        else:
            vals[n.id] = -ins[0]
    return vals


def torch_optimizer(model: CheckedModel, params: list[Any]) -> Any:
    spec = model.train.optimizer
    o = spec.options
    if spec.kind == "SGD":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                               nesterov=o["nesterov"], weight_decay=o["weight_decay"])
    if spec.kind == "Adam":
        return torch.optim.Adam(params, lr=o["lr"], betas=o["betas"], eps=o["eps"],
                                weight_decay=o["weight_decay"])
    return torch.optim.AdamW(params, lr=o["lr"], betas=o["betas"], eps=o["eps"],
                             weight_decay=o["weight_decay"])


def torch_train(model: CheckedModel, init: Mapping[str, np.ndarray],
                batches: list[dict[str, np.ndarray]], seed: int = 0
                ) -> tuple[dict[str, np.ndarray], list[float], list[dict[str, np.ndarray]]]:
    """Train with torch from `init`: final state, losses, and each step's gradients."""
    layout = state_layout(model)
    state = {k: torch.tensor(init[k], requires_grad=k in layout.params)
             for k in (*layout.params, *layout.buffers)}
    opt = torch_optimizer(model, [state[k] for k in layout.params])
    losses, grads = [], []
    for step, batch in enumerate(batches):
        data = {k: torch.from_numpy(v) for k, v in batch.items()}
        loss = torch_forward(model, state, data, "train", seed, step)[model.loss]
        opt.zero_grad()
        loss.backward()
        grads.append({k: state[k].grad.numpy().copy() for k in layout.params})
        losses.append(float(loss.detach()))
        opt.step()
    return {k: v.detach().numpy() for k, v in state.items()}, losses, grads


# ---------------------------------------------------------------- dslc side


def dslc_train(model: CheckedModel, batches: list[dict[str, np.ndarray]], seed: int = 0
               ) -> tuple[dict[str, np.ndarray], list[float], dict[str, np.ndarray]]:
    """Run the training step through ONNX Runtime: final state, losses and initial state."""
    graph = build_train_step(model, batch=len(next(iter(batches[0].values()))),
                             total_steps=len(batches))
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    state = {**initial_state(model, seed), **optimizer_state(model)}
    init = {k: v.copy() for k, v in state.items()}
    losses = []
    for batch in batches:
        out = dict(zip(names, sess.run(None, {**state, "seed": np.array(seed, np.int64),
                                               **batch}), strict=True))
        losses.append(float(out["loss"]))
        state = {k: out[f"{k}.next"] for k in state}
    return state, losses, init


def make_batches(model: CheckedModel, steps: int, batch: int, classes: int = 3,
                 seed: int = 5) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        b = {d.name: rng.normal(size=(batch, *d.type.shape)).astype(np.float32)
             for d in model.inputs}
        b.update({d.name: rng.integers(0, classes, size=(batch, *d.type.shape)).astype(np.int64)
                  for d in model.targets})
        out.append(b)
    return out


def source(body: str, input_shape: str, optimizer: str = "SGD(lr = 0.1, momentum = 0.9)") -> str:
    return f"""
model M {{
    input x: float[{input_shape}]
    target y: int[]
    logits = x {body} -> head: Dense(3)
    output probs = softmax(logits)
    loss cross_entropy(logits, y)
}}
train {{ optimizer = {optimizer} }}
"""


CASES = {
    # grouped + strided, `same` with an even kernel (asymmetric), dilated without bias
    "conv2d": ("-> Conv2D(6, 3, stride = 2, padding = 1, groups = 2) -> relu "
               "-> Conv2D(5, (2, 4), padding = same) -> relu "
               "-> Conv2D(3, 3, dilation = 2, bias = false) -> flatten", "4, 9, 9"),
    "conv1d_pools": ("-> Conv1D(4, 4, padding = same) -> relu "
                     "-> Conv1D(6, 3, stride = 2, groups = 2, dilation = 2) "
                     "-> MaxPool(3, stride = 2, padding = 1) "
                     "-> AvgPool(2, stride = 1, padding = 1) -> flatten", "3, 12"),
    "pools2d": ("-> Conv2D(4, 3, padding = same) -> MaxPool(3, stride = 2, padding = 1) "
                "-> AvgPool((3, 2), stride = 1, padding = (1, 0)) -> tanh "
                "-> MaxPool(2, stride = 1) -> GlobalAvgPool()", "2, 7, 7"),
    # disjoint windows that leave a remainder (the MaxUnpool gradient), 2-D and 1-D
    "maxpool_remainder": ("-> Conv2D(3, 2) -> MaxPool(2) -> reshape((3, 4)) -> MaxPool(3) "
                          "-> flatten", "2, 6, 6"),
    "batchnorm": ("-> Conv2D(4, 3) -> BatchNorm(momentum = 0.2) -> relu -> flatten "
                  "-> Dense(8) -> BatchNorm(eps = 1e-3) -> relu", "3, 6, 6"),
    "batchnorm1d_seq": ("-> BatchNorm() -> Conv1D(4, 3, padding = same) -> LayerNorm() "
                        "-> flatten", "2, 5"),
    "layernorm_dropout": ("-> flatten -> Dense(6) -> LayerNorm(eps = 1e-4) -> relu "
                          "-> Dropout(0.3) -> Dense(5) -> Dropout(0.5)", "2, 3"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layers_train_as_torch(name: str) -> None:
    body, shape = CASES[name]
    model = check_source(source(body, shape), f"{name}.nn")
    batches = make_batches(model, steps=4, batch=6)
    ours, losses, init = dslc_train(model, batches, seed=3)
    ref, ref_losses, _ = torch_train(model, init, batches, seed=3)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    layout = state_layout(model)
    for k in (*layout.params, *layout.buffers):
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
        if k in layout.params and not k.endswith("bias"):
            assert not np.allclose(ours[k], init[k]), f"{k} did not move"
    for k in layout.buffers:
        assert not np.allclose(ours[k], init[k]), f"buffer {k} was not updated"


@pytest.mark.parametrize("name", ["conv2d", "batchnorm", "layernorm_dropout"])
def test_first_step_gradients_match_torch(name: str) -> None:
    """Plain SGD with lr 1: one step moves each parameter by exactly minus its gradient."""
    body, shape = CASES[name]
    model = check_source(source(body, shape, "SGD(lr = 1.0)"), f"{name}.nn")
    batches = make_batches(model, steps=1, batch=5)
    ours, _, init = dslc_train(model, batches)
    _, _, grads = torch_train(model, init, batches)
    for k, g in grads[0].items():
        assert np.abs(g).max() > 0, k
        np.testing.assert_allclose(init[k] - ours[k], g, rtol=1e-4, atol=2e-6, err_msg=k)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_same_padding_with_even_kernel_is_torchs() -> None:
    """padding = same pads total//2 before and the rest after, as torch's padding='same'."""
    model = check_source(source("-> Conv2D(2, (2, 4), dilation = (3, 1), padding = same) "
                                "-> flatten", "1, 6, 7"), "same.nn")
    layer = model.layers["conv2d_1"]
    assert layer.args["padding"] == ((1, 2), (1, 2))
    state = initial_state(model, 0)
    x = np.random.default_rng(0).normal(size=(2, 1, 6, 7)).astype(np.float32)
    ours = torch_layer(model, next(n for n in model.nodes if n.op == "layer"),
                       torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in state.items()},
                       "eval", 0, 0)
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(state["conv2d_1.weight"]),
                    torch.from_numpy(state["conv2d_1.bias"]), padding="same", dilation=(3, 1))
    np.testing.assert_allclose(ours.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    batches = make_batches(model, steps=1, batch=2)
    got, losses, init = dslc_train(model, batches)
    _, ref_losses, _ = torch_train(model, init, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


# ---------------------------------------------------------------- a whole CNN through the API

CNN = """
block ConvBN(channels, kernel = 3) {
    input x
    # No bias before BatchNorm: its true gradient is zero, and Adam would amplify rounding noise.
    output x -> Conv2D(channels, kernel, padding = same, bias = false) -> BatchNorm() -> relu
}
model SmallCNN {
    input  image: float[1, 8, 8]
    target label: int[]
    features = image -> stem: ConvBN(8) -> MaxPool(2) -> ConvBN(12, kernel = 2)
        -> AvgPool(2, stride = 1, padding = 1) -> GlobalAvgPool()
    logits = features -> Dropout(0.25) -> head: Dense(10)
    output probs = softmax(logits)
    loss cross_entropy(logits, label, label_smoothing = 0.05)
    metric accuracy(logits, label)
}
train {
    data = "digits"
    batch_size = 64
    optimizer = AdamW(lr = 3e-3, weight_decay = 1e-4)
    shuffle = false
    validation = 0
    seed = 7
}
"""


def test_small_cnn_trains_and_exports_as_torch(tmp_path: Any) -> None:
    import dslc.api as api

    # Few steps: by the sixth, a max-pool window comes within float32 rounding of a tie,
    # and rounding alone decides which element takes the gradient (torch's own gradient
    # moves by 1e-3 between torch's and dslc's parameters there, which differ by 4e-7).
    steps = 5
    model = check_source(CNN, os.path.join(str(tmp_path), "small_cnn.nn"))
    result = api.train(model, steps=steps, out=str(tmp_path / "run"), progress=False)
    assert result.steps == steps

    data = api.load_data(model)
    x, y = data.arrays["image"], data.arrays["label"]
    batch = model.train.batch_size
    batches = [{"image": x[k * batch:(k + 1) * batch], "label": y[k * batch:(k + 1) * batch]}
               for k in range(steps)]
    ref, _, _ = torch_train(model, initial_state(model, 7), batches, seed=7)
    layout = state_layout(model)
    for k in (*layout.params, *layout.buffers):
        np.testing.assert_allclose(result.state[k], ref[k], rtol=1e-4, atol=1e-4, err_msg=k)

    path = api.export(model, str(tmp_path / "run" / "last.safetensors"),
                      str(tmp_path / "model.onnx"))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    sample = x[:37]
    (probs,) = sess.run(["probs"], {"image": sample})
    state = {k: torch.from_numpy(np.asarray(result.state[k])) for k in ref}
    want = torch_forward(model, state, {"image": torch.from_numpy(sample),
                                        "label": torch.from_numpy(y[:37])}, "infer")
    out_id = dict(model.outputs)["probs"]
    np.testing.assert_allclose(probs, want[out_id].numpy(), rtol=1e-4, atol=1e-6)
    assert math.isclose(float(probs.sum()), 37.0, rel_tol=1e-5)
