"""The `dslc` command line: check, compile, train, eval, export, gradcheck (docs/cli.md).

A thin layer over `dslc.api`: it parses arguments, prints results and turns
every user error into `FILE:LINE:COL: error: ...` with the source line on
stderr and exit status 1. Ctrl-C exits with 130 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Callable

from dslc import __version__
from dslc.errors import DslcError, render_all

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
MAX_CONFUSION_PRINT = 30  # classes; a larger matrix (a character vocabulary) is unreadable


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per verb."""
    p = argparse.ArgumentParser(
        prog="dslc", description="Compile and train .nn models with ONNX Runtime."
    )
    p.add_argument("--version", action="version", version=f"dslc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="parse and check a model; print its summary")
    c.add_argument("file", metavar="FILE")

    c = sub.add_parser(
        "compile", help="write the ONNX step, eval and inference graphs and initial weights"
    )
    c.add_argument("file", metavar="FILE")
    c.add_argument("-o", "--out", required=True, metavar="DIR")
    c.add_argument("--dump", choices=["ir"], help="also print the training step's IR")
    c.add_argument("--seed", type=_int)

    c = sub.add_parser("train", help="train a model")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--data", metavar="D", help="dataset: a .npz/.csv file, IDX files, or `digits`")
    c.add_argument("--epochs", type=_positive, metavar="N")
    c.add_argument("--steps", type=_positive, metavar="N", help="stop after N optimiser steps")
    c.add_argument("--device", choices=["cpu", "cuda", "auto"])
    c.add_argument("--out", metavar="RUN", help="run folder (default runs/<model name>)")
    c.add_argument("--init", metavar="CKPT", help="start from these parameters")
    c.add_argument("--resume", action="store_true", help="continue from RUN/last.safetensors")
    c.add_argument("--batch-size", type=_positive, metavar="N")
    c.add_argument("--seed", type=_int, metavar="N")
    c.add_argument("--threads", type=_positive, metavar="N", help="ONNX Runtime intra-op threads")
    c.add_argument(
        "--checkpoint-every",
        type=_positive,
        metavar="N",
        help="also write RUN/last.safetensors every N optimiser steps",
    )
    c.add_argument("--quiet", action="store_true", help="no progress output")

    c = sub.add_parser("eval", help="metrics of a checkpoint on a dataset")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--checkpoint", required=True, metavar="CKPT")
    c.add_argument("--data", metavar="D")
    c.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument(
        "--no-confusion", action="store_true", help="do not print a classifier's confusion matrix"
    )

    c = sub.add_parser("export", help="write the inference model with the checkpoint's weights")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--checkpoint", metavar="CKPT")
    c.add_argument("-o", "--out", required=True, metavar="MODEL.onnx")

    c = sub.add_parser("sample", help="sample text from a trained character model")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--checkpoint", required=True, metavar="CKPT")
    c.add_argument("--prime", metavar="TEXT", help="the text to start from")
    c.add_argument("--length", type=_int, default=200, metavar="N", help="characters to sample")
    c.add_argument("--temperature", type=float, default=1.0, metavar="T")
    c.add_argument("--seed", type=_int, default=0, metavar="S")
    c.add_argument("--data", metavar="D", help="the training text, for checkpoints without a vocab")

    c = sub.add_parser("plot", help="draw a run's loss and metrics per epoch as a PNG")
    c.add_argument("run", metavar="RUN")
    c.add_argument("-o", "--out", metavar="FILE.png", help="default RUN/metrics.png")

    c = sub.add_parser("gradcheck", help="compare compiled gradients with finite differences")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--seed", type=_int, default=0)
    c.add_argument("--batch-size", type=_positive, default=4, metavar="N")
    return p


# ---------------------------------------------------------------- commands


def cmd_check(args: argparse.Namespace) -> int:
    from dslc.api import load
    from dslc.check.summary import summary

    print(summary(load(args.file)))
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    from dslc.api import compile, load

    model = load(args.file)
    paths = compile(model, args.out, seed=args.seed)
    if args.dump == "ir":
        from dslc.ir.text import to_text
        from dslc.lower import build_train_step

        if model.loss is not None:
            print(to_text(build_train_step(model, batch=model.train.batch_size)))
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from dslc.api import load, train

    model = load(args.file)
    result = train(
        model,
        data=args.data,
        epochs=args.epochs,
        steps=args.steps,
        device=args.device,
        out=args.out,
        init=args.init,
        resume=args.resume,
        batch_size=args.batch_size,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
        checkpoint_every=args.checkpoint_every,
        command=("dslc", *args.argv),
    )
    last = result.history[-1] if result.history else {}
    shown = {k: v for k, v in last.items() if k not in ("epoch", "time_s", "samples_per_s")}
    print(" ".join(f"{k}={_num(v)}" for k, v in shown.items()))
    print(f"run folder: {result.run_dir}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from dslc.api import evaluate, load

    model = load(args.file)
    metrics = evaluate(model, args.checkpoint, args.data, device=args.device)
    if args.json:
        # A non-finite value is null, as in metrics.jsonl: NaN is not JSON.
        print(json.dumps({k: v if math.isfinite(v) else None for k, v in metrics.items()}))
        return EXIT_OK
    for k, v in metrics.items():
        print(f"{k}: {_num(v)}")
    if not args.no_confusion:
        from dslc.api import confusion_matrix

        confusion = confusion_matrix(model, args.checkpoint, args.data, device=args.device)
        if confusion is not None and len(confusion.matrix) <= MAX_CONFUSION_PRINT:
            print(confusion.table())
        elif confusion is not None:
            print(
                f"confusion matrix: {len(confusion.matrix)} classes, too many to print "
                "(dslc.api.confusion_matrix returns it)"
            )
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from dslc.api import plot

    print(f"wrote {plot(args.run, args.out)}", file=sys.stderr)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from dslc.api import export, load

    path = export(load(args.file), args.checkpoint, args.out)
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from dslc.api import gradcheck, load

    rows = gradcheck(load(args.file), batch=args.batch_size, seed=args.seed)
    for row in rows:
        print(row.line())
    bad = [r.name for r in rows if not r.ok]
    if bad:
        print(f"gradcheck: {len(bad)} parameter(s) mismatch: {', '.join(bad)}", file=sys.stderr)
        return EXIT_ERROR
    print(f"gradcheck: all {len(rows)} parameter gradients match")
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    from dslc.api import load
    from dslc.runtime.text import sample

    print(
        sample(
            load(args.file),
            args.checkpoint,
            prime=args.prime,
            length=args.length,
            temperature=args.temperature,
            seed=args.seed,
            data=args.data,
        )
    )
    return EXIT_OK


def _num(v: object) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "compile": cmd_compile,
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
    "gradcheck": cmd_gradcheck,
    "sample": cmd_sample,
    "plot": cmd_plot,
}


# ---------------------------------------------------------------- entry point


def _sources(err: DslcError, main_file: str | None) -> dict[str, str]:
    """Source text for every file a diagnostic points into, so the line and caret show."""
    files = {d.span.file for d in err.diagnostics if d.span is not None}
    if main_file:
        files.add(main_file)
    out: dict[str, str] = {}
    for f in files:
        try:
            with open(f, encoding="utf-8-sig", errors="replace") as fh:
                out[f] = fh.read()
        except OSError:
            continue
    return out


def _os_error(e: OSError) -> str:
    """One line for a failed file operation: the path the user gave, then the reason."""
    path = e.filename2 if e.filename2 is not None else e.filename  # a rename's target
    reason = e.strerror or str(e)
    if isinstance(e, FileExistsError) and path is not None and not os.path.isdir(path):
        reason = "is a file, where a folder is needed"  # os.makedirs met a file on the way
    return f"{path}: {reason}" if path is not None else reason


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code) if isinstance(e.code, int) else EXIT_ERROR
    args.argv = list(sys.argv[1:] if argv is None else argv)  # run.json records the command line
    try:
        return COMMANDS[args.command](args)
    except DslcError as err:
        print(render_all(err, _sources(err, getattr(args, "file", None))), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ndslc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a path the user gave: an unwritable --out, a file where a folder goes
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return EXIT_ERROR
    except RecursionError:
        print("error: the model is nested too deeply to process", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - never a traceback for user input
        if os.environ.get("DSLC_TRACEBACK"):
            traceback.print_exc()
        print(f"error: internal error in dslc ({type(e).__name__}: {e})", file=sys.stderr)
        print("hint: set DSLC_TRACEBACK=1 to see where; please report it", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
