"""The compiled graphs stand on their own: bare onnxruntime + numpy can train and run them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from dslc.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter that never imports dslc: the step graph, its
# initial state and the documented names are all a consumer needs.
DRIVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file

    assert "dslc" not in sys.modules
    out = sys.argv[1]
    state = load_file(out + "/init.safetensors")
    sess = ort.InferenceSession(out + "/train_step.onnx", providers=["CPUExecutionProvider"])
    batch = sess.get_inputs()[-1].shape[0]
    rng = np.random.default_rng(0)
    image = rng.random((batch, 64), dtype=np.float32)
    label = (image[:, :10].argmax(axis=1)).astype(np.int64)
    outputs = [o.name for o in sess.get_outputs()]
    losses = []
    for _ in range(60):
        feeds = {i.name: state[i.name] for i in sess.get_inputs() if i.name in state}
        feeds["seed"] = np.array(0, np.int64)
        feeds["image"], feeds["label"] = image, label
        res = dict(zip(outputs, sess.run(None, feeds)))
        losses.append(float(res["loss"]))
        for name in list(state):
            state[name] = res[name + ".next"]
    assert int(state["step"]) == 60, state["step"]
    assert losses[-1] < 0.5 * losses[0], losses
    model = ort.InferenceSession(out + "/model.onnx", providers=["CPUExecutionProvider"])
    probs = model.run(None, {"image": image[:5]})[0]
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    print("ok", losses[0], losses[-1])
    """
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    assert main(["compile", str(ROOT / "examples" / "digits_mlp.nn"), "-o", str(out)]) == 0
    return out


def test_bare_onnxruntime_trains_the_step_graph(compiled: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(compiled)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


@pytest.mark.parametrize("name", ["train_step.onnx", "eval_step.onnx", "model.onnx"])
def test_compiled_graphs_pass_the_full_checker(compiled: Path, name: str) -> None:
    model = onnx.load(str(compiled / name))
    onnx.checker.check_model(model, full_check=True)
    assert all(op.domain in ("", "ai.onnx") for op in model.opset_import)
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)


def test_compiling_twice_is_byte_identical(tmp_path: Path) -> None:
    for run in ("a", "b"):
        assert main(["compile", str(ROOT / "examples" / "digits_cnn.nn"), "-o",
                     str(tmp_path / run)]) == 0
    for name in ("train_step.onnx", "eval_step.onnx", "model.onnx", "init.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
