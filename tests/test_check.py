"""The checker: types and shapes, §6 naming, blocks, shared layers, train settings, summary."""

from __future__ import annotations

import math

import pytest

from dslc.check import check_source
from dslc.check.model import CallValue, CheckedModel, TensorType, TrainConfig
from dslc.check.summary import inference_flops, summary

SECTION_1 = """
block ConvBN(channels, kernel = 3) {
    input x
    output x -> Conv2D(channels, kernel, padding = same) -> BatchNorm() -> relu
}

model DigitsCNN {
    input  image: float[1, 8, 8]
    target label: int[]

    features = image
        -> stem: ConvBN(16)
        -> MaxPool(2)
        -> ConvBN(32)
        -> GlobalAvgPool()
    logits = features -> Dropout(0.25) -> head: Dense(10)

    output probs = softmax(logits)
    loss cross_entropy(logits, label, label_smoothing = 0.05)
    metric accuracy(logits, label)
}

train {
    data       = "digits"
    epochs     = 30
    batch_size = 64
    optimizer  = AdamW(lr = 3e-3, weight_decay = 1e-4)
    schedule   = cosine(warmup_steps = 50)
    regularize = [l2(1e-5, on = weights)]
    validation = 0.2
    seed       = 0
    early_stopping = EarlyStopping(monitor = val_loss, patience = 5)
}
"""


def chk(src: str) -> CheckedModel:
    return check_source(src, "t.nn")


def model(*lines: str, inputs: str = "input x: float[64]\n  target y: int[]") -> CheckedModel:
    return chk("model M {\n  " + inputs + "\n" + "".join(f"  {s}\n" for s in lines) + "}\n")


def value_type(m: CheckedModel, name: str) -> TensorType:
    """The type of an output by name."""
    return m.nodes[dict(m.outputs)[name]].type


def shapes(m: CheckedModel) -> dict[str, tuple]:
    return {p.name: p.shape for p in m.params()}


# ---------------------------------------------------------------- §1 and §6 naming


def test_section_1_example_names_and_shapes():
    m = chk(SECTION_1)
    assert list(m.layers) == [
        "stem.conv2d_1",
        "stem.batchnorm_1",
        "maxpool_1",
        "convbn_1.conv2d_1",
        "convbn_1.batchnorm_1",
        "globalavgpool_1",
        "dropout_1",
        "head",
    ]
    s = shapes(m)
    assert s["stem.conv2d_1.weight"] == (16, 1, 3, 3)
    assert s["convbn_1.conv2d_1.weight"] == (32, 16, 3, 3)
    assert s["convbn_1.batchnorm_1.running_var"] == (32,)
    assert s["head.weight"] == (10, 32) and s["head.bias"] == (10,)
    assert value_type(m, "probs") == TensorType("float32", (10,))
    assert m.nodes[m.loss].type == TensorType("float32", (), batched=False)
    assert [name for name, _ in m.metrics] == ["accuracy"]
    assert [d.name for d in m.inputs] == ["image"] and [d.name for d in m.targets] == ["label"]


def test_counters_per_kind_skip_labelled_layers():
    m = model(
        "a = x -> Dense(8) -> mid: Dense(8) -> Dense(8)",
        "c = x -> reshape((1, 8, 8)) -> Conv2D(2, 3) -> Conv2D(2, 3) -> BatchNorm()",
        "output a",
    )
    assert list(m.layers) == ["dense_1", "mid", "dense_2", "conv2d_1", "conv2d_2", "batchnorm_1"]


def test_node_ids_are_indices_in_topological_order():
    m = chk(SECTION_1)
    for i, n in enumerate(m.nodes):
        assert n.id == i
        assert all(j < i for j in n.inputs)


def test_layer_nodes_refer_to_layer_instances():
    m = chk(SECTION_1)
    used = [n.attrs["layer"] for n in m.nodes if n.op == "layer"]
    assert used == list(m.layers)


# ---------------------------------------------------------------- blocks


def test_block_defaults_and_arguments_are_substituted():
    src = """
block Mlp(width, depth_scale = 2, act = relu) {
    input a
    output a -> Dense(width * depth_scale) -> Dense(width)
}
model M {
    input x: float[5]
    p = x -> Mlp(3)
    q = x -> wide: Mlp(4, depth_scale = 3)
    output p
    output q
}
"""
    m = chk(src)
    s = shapes(m)
    assert s["mlp_1.dense_1.weight"] == (6, 5)
    assert s["mlp_1.dense_2.weight"] == (3, 6)
    assert s["wide.dense_1.weight"] == (12, 5)
    assert value_type(m, "q") == TensorType("float32", (4,))


def test_nested_blocks_prefix_names_and_restart_counters():
    src = """
block Inner { input a
    output a -> Dense(4) -> Dense(4) }
block Outer { input a
    output a -> Inner() -> Dense(4) -> Inner() }
model M { input x: float[4]
    output y = x -> Outer() -> stem: Outer() }
"""
    m = chk(src)
    assert list(m.layers) == [
        "outer_1.inner_1.dense_1",
        "outer_1.inner_1.dense_2",
        "outer_1.dense_1",
        "outer_1.inner_2.dense_1",
        "outer_1.inner_2.dense_2",
        "stem.inner_1.dense_1",
        "stem.inner_1.dense_2",
        "stem.dense_1",
        "stem.inner_2.dense_1",
        "stem.inner_2.dense_2",
    ]


def test_block_parameter_used_as_a_value():
    src = """
block Scale(k) { input a
    output a * k }
model M { input x: float[4]
    output y = x -> Scale(0.5) }
"""
    m = chk(src)
    consts = [n.attrs["value"] for n in m.nodes if n.op == "const"]
    assert consts == [0.5]


# ---------------------------------------------------------------- shared layers


def test_shared_layer_has_one_parameter_set():
    m = chk(open("examples/residual.nn").read())
    applications = [n for n in m.nodes if n.op == "layer" and n.attrs["layer"] == "mix"]
    assert len(applications) == 2
    assert [p.name for p in m.layers["mix"].params] == ["mix.weight", "mix.bias"]
    assert m.layers["mix"].args["init"].name == "he_uniform"
    assert "(shared x2)" in summary(m)


def test_shared_layer_inside_a_block_is_prefixed():
    src = """
block Twice { input a
    layer f = Dense(4)
    output a -> f -> f }
model M { input x: float[4]
    output y = x -> Twice() }
"""
    m = chk(src)
    assert list(m.layers) == ["twice_1.f"]


# ---------------------------------------------------------------- layers: shapes and parameters


def test_dense_on_a_sequence_keeps_the_symbolic_axis():
    m = model("output h = x -> Dense(7)", inputs="input x: float[T, 3]")
    assert value_type(m, "h").shape == ("T", 7)


def test_dense_parameters_fans_and_kernel_flags():
    m = model("output h = x -> Dense(7, bias = false)")
    (w,) = m.layers["dense_1"].params
    assert (w.name, w.shape, w.fan_in, w.fan_out, w.is_kernel) == (
        "dense_1.weight",
        (7, 64),
        64,
        7,
        True,
    )
    assert w.init == CallValue("glorot_uniform")


@pytest.mark.parametrize(
    "args, out",
    [
        ("8, 3", (8, 6, 6)),
        ("8, 3, padding = same", (8, 8, 8)),
        ("8, 4, padding = same", (8, 8, 8)),
        ("8, (3, 1), stride = 2, padding = 1", (8, 4, 5)),
        ("8, 3, dilation = 2, padding = same", (8, 8, 8)),
        ("4, 3, groups = 2, padding = (1, 0)", (4, 8, 6)),
    ],
)
def test_conv2d_output_shapes(args, out):
    m = model(f"output h = x -> Conv2D({args})", inputs="input x: float[2, 8, 8]")
    assert value_type(m, "h").shape == out


def test_conv_padding_is_normalised_per_dimension():
    m = model("output h = x -> Conv2D(3, 4, padding = same)", inputs="input x: float[2, 8, 8]")
    args = m.layers["conv2d_1"].args
    assert args["padding"] == ((1, 2), (1, 2))
    assert args["kernel"] == (4, 4) and args["stride"] == (1, 1) and args["dilation"] == (1, 1)


def test_conv_parameters_match_torch():
    torch = pytest.importorskip("torch")
    m = model(
        "output h = x -> Conv1D(6, 5, groups = 2, padding = 2, stride = 2)",
        inputs="input x: float[4, 11]",
    )
    ref = torch.nn.Conv1d(4, 6, 5, groups=2, padding=2, stride=2)
    out = ref(torch.zeros(1, 4, 11))
    assert value_type(m, "h").shape == tuple(out.shape[1:])
    w = m.layers["conv1d_1"].params[0]
    assert w.shape == tuple(ref.weight.shape)
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(ref.weight)
    assert (w.fan_in, w.fan_out) == (fan_in, fan_out)


@pytest.mark.parametrize(
    "kind, torch_kind", [("LSTM", "LSTM"), ("GRU", "GRU"), ("SimpleRNN", "RNN")]
)
def test_recurrent_parameters_match_torch(kind, torch_kind):
    torch = pytest.importorskip("torch")
    m = model(f"output h = x -> {kind}(5, bidirectional = true)", inputs="input x: float[T, 3]")
    ref = getattr(torch.nn, torch_kind)(3, 5, bidirectional=True, batch_first=True)
    ours = {p.name.split(".", 1)[1]: p.shape for p in m.params()}
    theirs = {k.replace("_l0", ""): tuple(v.shape) for k, v in ref.named_parameters()}
    assert ours == theirs
    assert value_type(m, "h").shape == (10,)
    kernels = {p.name for p in m.params() if p.is_kernel}
    assert kernels == {
        f"{kind.lower()}_1.{n}"
        for n in ("weight_ih", "weight_hh", "weight_ih_reverse", "weight_hh_reverse")
    }


def test_return_sequences_keeps_time():
    m = model("output h = x -> GRU(8, return_sequences = true)", inputs="input x: float[T, 3]")
    assert value_type(m, "h").shape == ("T", 8)


def test_embedding_appends_a_dimension():
    m = model("output h = t -> Embedding(100, 16)", inputs="input t: int[T]")
    assert value_type(m, "h") == TensorType("float32", ("T", 16))
    (w,) = m.params()
    assert w.shape == (100, 16) and w.is_kernel


def test_batchnorm_buffers_are_not_trainable():
    m = model("output h = x -> BatchNorm(momentum = 0.2)", inputs="input x: float[3, 4, 4]")
    flags = {p.name: (p.trainable, p.init.name) for p in m.params()}
    assert flags == {
        "batchnorm_1.weight": (True, "ones"),
        "batchnorm_1.bias": (True, "zeros"),
        "batchnorm_1.running_mean": (False, "zeros"),
        "batchnorm_1.running_var": (False, "ones"),
    }
    assert m.layers["batchnorm_1"].args["momentum"] == 0.2


def test_pooling_by_rank():
    m = model(
        "a = x -> MaxPool(2)",
        "b = s -> AvgPool(3, stride = 1, padding = 1)",
        "output a",
        "output b",
        inputs="input x: float[3, 9, 9]\n  input s: float[2, 10]",
    )
    assert value_type(m, "a").shape == (3, 4, 4)
    assert value_type(m, "b").shape == (2, 10)
    assert m.layers["maxpool_1"].args == {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}


def test_flatten_and_global_pool():
    m = model(
        "a = x -> Flatten()",
        "b = x -> GlobalAvgPool()",
        "output a",
        "output b",
        inputs="input x: float[3, 4, 5]",
    )
    assert value_type(m, "a").shape == (60,)
    assert value_type(m, "b").shape == (3,)


# ---------------------------------------------------------------- functions and arithmetic


def test_reductions_normalise_axes():
    m = model(
        "a = mean(x, axis = -1)",
        "b = x -> sum(axis = (0, 2), keepdims = true)",
        "c = max(x)",
        "output a",
        "output b",
        "output c",
        inputs="input x: float[T, 4, 5]",
    )
    assert value_type(m, "a").shape == ("T", 4)
    assert value_type(m, "b").shape == (1, 4, 1)
    assert value_type(m, "c").shape == ()
    kw = [n.attrs["kwargs"] for n in m.nodes if n.op == "fn"]
    assert [k["axis"] for k in kw] == [(2,), (0, 2), (0, 1, 2)]


def test_shape_functions():
    m = model(
        "a = reshape(x, (4, -1))",
        "b = a -> transpose",
        "c = concat(a, a, axis = 0)",
        "d = x -> leaky_relu(alpha = 0.1) -> softmax",
        "output a",
        "output b",
        "output c",
        "output d",
    )
    assert value_type(m, "a").shape == (4, 16)
    assert value_type(m, "b").shape == (16, 4)
    assert value_type(m, "c").shape == (8, 16)
    kw = {n.attrs["name"]: n.attrs["kwargs"] for n in m.nodes if n.op == "fn"}
    assert kw["leaky_relu"] == {"alpha": 0.1}
    assert kw["softmax"] == {"axis": 0}
    assert kw["reshape"] == {"shape": (4, 16)}
    assert kw["transpose"] == {"perm": (1, 0)}


def test_broadcasting_and_matmul():
    m = model(
        "a = x + b",
        "c = x @ w",
        "output a",
        "output c",
        inputs="input x: float[T, 1, 4]\n  input b: float[3, 1]\n  input w: float[4, 2]",
    )
    assert value_type(m, "a").shape == ("T", 3, 4)
    assert value_type(m, "c").shape == ("T", 1, 2)


def test_loss_terms_are_added_and_scaled():
    m = model(
        "p = x -> Dense(10)",
        "r = x -> Dense(1) -> mean(axis = 0)",
        "loss cross_entropy(p, y) + 0.5 * mse(r, z)",
        inputs="input x: float[64]\n  target y: int[]\n  target z: float[]",
    )
    loss = m.nodes[m.loss]
    assert loss.op == "binop" and loss.attrs["op"] == "+"
    assert loss.type == TensorType("float32", (), batched=False)


def test_per_step_cross_entropy_and_float_probabilities():
    m = model(
        "loss cross_entropy(x, y)",
        "metric soft = cross_entropy(x, p)",
        inputs="input x: float[T, 5]\n  target y: int[T]\n  target p: float[T, 5]",
    )
    assert [name for name, _ in m.metrics] == ["soft"]


def test_named_metrics_and_function_named_metrics():
    m = model(
        "logits = x -> Dense(10)",
        "metric accuracy(logits, y)",
        "metric top3 = top_k_accuracy(logits, y, k = 3)",
    )
    assert [name for name, _ in m.metrics] == ["accuracy", "top3"]
    top3 = m.nodes[dict(m.metrics)["top3"]]
    assert top3.attrs == {"name": "top_k_accuracy", "kwargs": {"k": 3}}


def test_model_without_target_or_train():
    m = chk(open("examples/autoencoder.nn").read())
    assert m.targets == () and [n for n, _ in m.outputs] == ["code", "recon"]
    m = model("output h = x -> relu")
    assert m.train == TrainConfig() and m.loss is None


# ---------------------------------------------------------------- train settings


def trained(*items: str) -> CheckedModel:
    return chk(
        "model M {\n  input x: float[64]\n  target y: int[]\n"
        "  logits = x -> Dense(32) -> head: Dense(10)\n"
        "  loss cross_entropy(logits, y)\n  metric accuracy(logits, y)\n}\n"
        "train {\n" + "".join(f"  {i}\n" for i in items) + "}\n"
    )


def test_train_defaults():
    t = trained().train
    assert (t.data, t.validation, t.epochs, t.batch_size, t.shuffle, t.seed, t.device) == (
        "digits",
        0.0,
        10,
        32,
        True,
        0,
        "auto",
    )
    assert t.optimizer.kind == "Adam" and t.optimizer.options["lr"] == 1e-3
    assert t.schedule.kind == "constant" and t.early_stopping is None


@pytest.mark.parametrize(
    "text, kind, options",
    [
        ("SGD(0.1)", "SGD", {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}),
        ("SGD()", "SGD", {"lr": 1e-3}),
        (
            "Adam(betas = (0.8, 0.9))",
            "Adam",
            {"lr": 1e-3, "betas": (0.8, 0.9), "eps": 1e-8, "weight_decay": 0.0},
        ),
        ("AdamW(lr = 3e-3)", "AdamW", {"weight_decay": 0.01, "betas": (0.9, 0.999)}),
        ("RMSprop()", "RMSprop", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0}),
        (
            "Adagrad(clip_norm = 1)",
            "Adagrad",
            {"lr": 1e-2, "eps": 1e-10, "clip_norm": 1.0, "clip_value": None},
        ),
    ],
)
def test_optimizer_options_are_filled(text, kind, options):
    opt = trained(f"optimizer = {text}").train.optimizer
    assert opt.kind == kind
    assert {k: opt.options[k] for k in options} == options
    assert "clip_norm" in opt.options and "clip_value" in opt.options


@pytest.mark.parametrize(
    "text, kind, options",
    [
        ("constant", "constant", {}),
        ("step(100)", "step", {"every": 100, "gamma": 0.1}),
        ("exponential(gamma = 0.99)", "exponential", {"gamma": 0.99}),
        ("cosine()", "cosine", {"min_lr": 0.0, "warmup_steps": 0}),
        ("linear_warmup(steps = 20)", "linear_warmup", {"steps": 20}),
    ],
)
def test_schedules_are_filled(text, kind, options):
    s = trained(f"schedule = {text}").train.schedule
    assert (s.kind, s.options) == (kind, options)


def test_regularizers_resolve_to_parameter_names():
    m = trained('regularize = [l2(1e-4), l1(1e-5, on = all), l2(1e-3, on = "head.*")]')
    terms = [(r.kind, r.coeff, r.params) for r in m.regularizers]
    assert terms == [
        ("l2", 1e-4, ("dense_1.weight", "head.weight")),
        ("l1", 1e-5, ("dense_1.weight", "dense_1.bias", "head.weight", "head.bias")),
        ("l2", 1e-3, ("head.weight", "head.bias")),
    ]
    assert m.train.regularize == m.regularizers


def test_per_layer_regularizer():
    m = model("output h = x -> Dense(4, regularizer = l1(0.01))")
    assert [(r.kind, r.coeff, r.params) for r in m.regularizers] == [
        ("l1", 0.01, ("dense_1.weight",))
    ]
    assert m.train.regularize == ()


def test_other_train_keys():
    t = trained(
        'data = text("data/book.txt", seq_len = 32)',
        'validation = "val.npz"',
        "epochs = 3",
        "batch_size = 8",
        "shuffle = false",
        "seed = 7",
        "device = cpu",
        "early_stopping = EarlyStopping(monitor = val_accuracy, mode = max)",
    ).train
    assert t.data == CallValue(
        "text", (), (("path", "data/book.txt"), ("seq_len", 32)), t.data.span
    )
    assert (t.validation, t.epochs, t.batch_size, t.shuffle, t.seed, t.device) == (
        "val.npz",
        3,
        8,
        False,
        7,
        "cpu",
    )
    es = t.early_stopping
    assert (es.monitor, es.patience, es.min_delta, es.mode, es.restore_best) == (
        "val_accuracy",
        5,
        0.0,
        "max",
        True,
    )


# ---------------------------------------------------------------- summary


def test_summary_rows_and_totals():
    m = chk(SECTION_1)
    text = summary(m)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("convbn_1.conv2d_1 "))
    assert row.split()[1:] == ["Conv2D", "[32,", "4,", "4]", "4,640"]
    trainable = sum(math.prod(p.shape) for p in m.params() if p.trainable)
    assert f"trainable parameters: {trainable:,}" in text
    assert "buffers: 96" in text
    assert "forward FLOPs per example:" in text


def test_flops_of_a_dense_layer():
    m = model("output h = x -> Dense(10)")
    assert inference_flops(m) == 2 * 64 * 10 + 10
    assert "forward FLOPs per example: 1,290" in summary(m)


def test_reshape_keeps_symbolic_sizes():
    m = model("output h = reshape(x, (T, 2, -1))", inputs="input x: float[T, 8]")
    assert value_type(m, "h").shape == ("T", 2, 4)


def test_check_source_accepts_bytes():
    m = check_source(b"model M { input x: float[2]\n output y = x -> relu }", "b.nn")
    assert m.name == "M" and m.file == "b.nn"


def test_reference_documents_every_catalogue_entry():
    from pathlib import Path

    from dslc.catalogue import (
        FUNCTION_LIKE,
        INITIALIZERS,
        LAYERS,
        OPTIMIZERS,
        REGULARIZERS,
        SCHEDULES,
        TRAIN_KEYS,
    )

    doc = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()
    names = [
        *LAYERS,
        *FUNCTION_LIKE,
        *OPTIMIZERS,
        *SCHEDULES,
        *REGULARIZERS,
        *INITIALIZERS,
        *TRAIN_KEYS,
    ]
    missing = [n for n in names if f"`{n}" not in doc and f"{n}(" not in doc]
    assert missing == []


def test_constant_arithmetic_in_block_arguments():
    src = """
block Half(width) { input a
    output a -> Dense(width / 2) -> Dropout(1 / 4) -> Dense(width * 2 - 1) }
model M { input x: float[3]
    output y = x -> Half(64) }
"""
    m = chk(src)
    assert m.layers["half_1.dense_1"].args["units"] == 32
    assert m.layers["half_1.dropout_1"].args["rate"] == 0.25
    assert m.layers["half_1.dense_2"].args["units"] == 127
