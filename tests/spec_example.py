"""The whole-file example of LANGUAGE.md §1, shared by the parser and fuzz tests."""

EXAMPLE = """\
# digits_cnn.nn — 8x8 grayscale digits, 10 classes
block ConvBN(channels, kernel = 3) {
    input x
    output x -> Conv2D(channels, kernel, padding = same) -> BatchNorm() -> relu
}

model DigitsCNN {
    input  image: float[1, 8, 8]          # per-example shape; batch dim is implicit
    target label: int[]                   # a class index per example

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
    data       = "digits"                 # overridable with --data
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
