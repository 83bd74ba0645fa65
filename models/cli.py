"""``seqserve train | export | inspect``: the offline commands.

Every failure a user can cause ends in one line on stderr naming the problem,
and a non-zero exit status; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2
EXIT_FAILED = 1


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def train_parser() -> Parser:
    p = Parser(prog="seqserve train", description="Train the demo models on data shipped inside packages.")
    p.add_argument("--demo", action="append", choices=["vowels", "names", "sunspots"],
                   help="demo to train (repeatable; default: all)")
    p.add_argument("--out", type=Path, default=Path("build/checkpoints"),
                   help="folder for <name>.pt (state_dict) and <name>.spec.json (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a few epochs on a subset: a smoke test, not a model")
    return p


def export_parser() -> Parser:
    p = Parser(prog="seqserve export",
               description="Check a checkpoint's exported graphs against the reference module, then write "
                           "<repository>/<name>/<version>/ (nothing is written if any check fails).")
    p.add_argument("checkpoint", type=Path, help="a state_dict saved with torch.save (read with weights_only=True)")
    p.add_argument("--spec", type=Path, help="model spec, JSON or YAML (default: <checkpoint>.spec.json beside it)")
    p.add_argument("--repository", type=Path, default=Path("repository"), help="model repository (default: %(default)s)")
    p.add_argument("--version", type=int, help="version to write (default: the next free one)")
    p.add_argument("--parity-batches", type=int, default=100,
                   help="random mixed-length batches to check (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity batches (default: %(default)s)")
    return p


def inspect_parser() -> Parser:
    p = Parser(prog="seqserve inspect", description="List a checkpoint's tensors and guess its architecture.")
    p.add_argument("checkpoint", type=Path)
    return p


def run_train(args: argparse.Namespace) -> int:
    from models.demos import DEMOS

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.demo or list(DEMOS):
        import torch

        model = DEMOS[name].build(args.quick)
        torch.save(model.state_dict(), args.out / f"{name}.pt")
        model.spec.save(args.out / f"{name}.spec.json")
        print(f"{name}: {json.dumps(model.spec.metrics)} -> {args.out / (name + '.pt')}")
    return 0


def default_spec_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.removesuffix(checkpoint.suffix) + ".spec.json")


def run_export(args: argparse.Namespace) -> int:
    from models.checkpoint import build_model, load_state_dict
    from models.export import sha256
    from models.export import export_model
    from models.spec import ModelSpec

    spec_path = args.spec or default_spec_path(args.checkpoint)
    if not spec_path.is_file():
        raise UserError(f"{spec_path}: no such spec file (pass --spec)")
    try:
        spec = ModelSpec.load(spec_path)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{spec_path}: {exc}") from None
    state = load_state_dict(args.checkpoint)
    model = build_model(spec, state, source=str(args.checkpoint))
    source = {"checkpoint": args.checkpoint.name, "checkpoint_sha256": sha256(args.checkpoint),
              "spec": spec_path.name, "reference": "seqserve's plain nn.LSTM/nn.GRU module, one sequence at a time"}
    path = export_model(model, args.repository, args.version, batches=args.parity_batches, seed=args.seed,
                        source=source)
    parity = json.loads((path / "parity.json").read_text())
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in parity["max_abs_diff"].items())
    print(f"wrote {path} (parity over {parity['sequences']} sequences in {parity['batches']} batches: {diffs})")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from models.checkpoint import load_state_dict
    from models.inspect import describe

    print(describe(load_state_dict(args.checkpoint)))
    return 0


class UserError(Exception):
    """A mistake in what the user gave us; reported in one line."""


COMMANDS: dict[str, tuple[Callable[[], Parser], Callable[[argparse.Namespace], int]]] = {
    "train": (train_parser, run_train),
    "export": (export_parser, run_export),
    "inspect": (inspect_parser, run_inspect),
}


def main(command: str, argv: list[str]) -> int:
    from models.checkpoint import CheckpointError
    from models.export import ExportError
    from models.parity import ParityError
    from models.spec import SpecError

    make_parser, run = COMMANDS[command]
    args = make_parser().parse_args(argv)
    try:
        return run(args)
    except (UserError, CheckpointError, ExportError, ParityError, SpecError) as exc:
        print(f"seqserve {command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
