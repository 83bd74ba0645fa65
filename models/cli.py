"""``seqserve train | export | inspect``: the offline commands.

Every failure a user can cause ends in one line on stderr naming the problem,
and a non-zero exit status; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from models.spec import UserModule

EXIT_USAGE = 2
EXIT_FAILED = 1

TRAIN_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
"""Set by ``seqserve train --portable`` before torch is loaded (each is read once, at first use), so training takes
the same arithmetic path on any x86-64 CPU: PyTorch's own kernels without the CPU's vector extensions
(AVX2 and AVX-512 kernels sum in different orders), and MKL's reproducibility branch for every Intel or
compatible CPU. ``models.train`` adds the rest: fixed threads, oneDNN off."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def train_parser() -> Parser:
    p = Parser(prog="seqserve train", description="Train the demo models on data shipped inside packages.")
    p.add_argument(
        "--demo",
        action="append",
        choices=["vowels", "names", "sunspots"],
        help="demo to train (repeatable; default: all)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("build/checkpoints"),
        help="folder for <name>.pt (state_dict) and <name>.spec.json (default: %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="a few epochs on a subset: a smoke test, not a model")
    p.add_argument(
        "--portable",
        action="store_true",
        help="pin the arithmetic (PyTorch's plain CPU kernels, MKL's compatible branch, no oneDNN) so that any "
        "x86-64 CPU trains the same weights bit for bit; several times slower",
    )
    return p


def export_parser() -> Parser:
    p = Parser(
        prog="seqserve export",
        description="Check a checkpoint's exported graphs against the reference module, then write "
        "<repository>/<name>/<version>/ (nothing is written if any check fails).",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="a state_dict saved with torch.save (read with weights_only=True), or an .npz of arrays",
    )
    p.add_argument("--spec", type=Path, help="model spec, JSON or YAML (default: <checkpoint>.spec.json beside it)")
    p.add_argument(
        "--module",
        metavar="FILE.py:CLASS",
        help="your own model class to check parity against (default: the spec's reference, else "
        "seqserve's plain module); built with the spec's reference.kwargs",
    )
    p.add_argument("--module-kwargs", metavar="JSON", help="constructor arguments for --module, a JSON object")
    p.add_argument(
        "--module-inputs",
        choices=["batch", "batch_and_lengths", "sequence"],
        help="how --module is called on one sequence x: module(x[None]), module(x[None], lengths) "
        "or module(x) (default: the spec's, else batch)",
    )
    p.add_argument(
        "--repository", type=Path, default=Path("repository"), help="model repository (default: %(default)s)"
    )
    p.add_argument("--version", type=int, help="version to write (default: the next free one)")
    p.add_argument(
        "--parity-batches", type=int, default=100, help="random mixed-length batches to check (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the parity batches (default: %(default)s)")
    return p


def inspect_parser() -> Parser:
    p = Parser(
        prog="seqserve inspect",
        description="List a checkpoint's tensors, suggest its family (F1-F9) and a spec to export it with.",
    )
    p.add_argument("checkpoint", type=Path, help="a state_dict (.pt) or an .npz of arrays")
    p.add_argument("--write-spec", type=Path, metavar="PATH", help="also write the suggested spec to PATH (JSON)")
    return p


def pin_training_arithmetic() -> None:
    """Apply ``TRAIN_ENVIRONMENT``; a different value already set is replaced, with a note on stderr."""
    if "torch" in sys.modules:
        raise RuntimeError("pin_training_arithmetic() must run before torch is imported")
    for name, value in TRAIN_ENVIRONMENT.items():
        given = os.environ.get(name)
        if given is not None and given != value:
            print(f"seqserve train: {name}={given} replaced by {value} (training pins it)", file=sys.stderr)
        os.environ[name] = value


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


def user_module(args: argparse.Namespace, spec_reference: UserModule | None) -> UserModule | None:
    """The spec's reference, overridden piece by piece by the --module flags."""
    from models.spec import UserModule

    if args.module is None:
        if (args.module_kwargs is not None or args.module_inputs is not None) and spec_reference is None:
            raise UserError("--module-kwargs and --module-inputs need --module (or a reference in the spec)")
        if spec_reference is None:
            return None
        source, class_name = spec_reference.source, spec_reference.class_name
    else:
        source, sep, class_name = args.module.rpartition(":")
        if not sep or not source or not class_name.isidentifier():
            raise UserError(f"--module {args.module!r}: expected FILE.py:CLASS")
        source = str(Path(source).resolve())
    kwargs = spec_reference.kwargs if spec_reference else {}
    if args.module_kwargs is not None:
        try:
            kwargs = json.loads(args.module_kwargs)
        except json.JSONDecodeError as exc:
            raise UserError(f"--module-kwargs: not JSON ({exc})") from None
        if not isinstance(kwargs, dict):
            raise UserError("--module-kwargs: a JSON object of constructor arguments")
    inputs = args.module_inputs or (spec_reference.inputs if spec_reference else "batch")
    return UserModule(source, class_name, kwargs, inputs)


def run_export(args: argparse.Namespace) -> int:
    from models.checkpoint_export import export_checkpoint, load_spec
    from models.streaming import describe as describe_streaming

    spec_path = args.spec or default_spec_path(args.checkpoint)
    user = user_module(args, load_spec(spec_path).reference)
    path = export_checkpoint(
        args.checkpoint,
        spec_path,
        args.repository,
        module=user,
        version=args.version,
        batches=args.parity_batches,
        seed=args.seed,
    )
    parity = json.loads((path / "parity.json").read_text())
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in parity["max_abs_diff"].items())
    reference_name = json.loads((path / "model.json").read_text())["parity"]["reference"]
    print(
        f"wrote {path} (parity against {reference_name} over {parity['sequences']} sequences in "
        f"{parity['batches']} batches: {diffs})"
    )
    print(describe_streaming(path))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from models.checkpoint import load_state_dict
    from models.inspect import describe, guess_family

    state = load_state_dict(args.checkpoint)
    name = args.checkpoint.name.split(".")[0]
    print(describe(state, name))
    if args.write_spec is not None:
        guess = guess_family(state, name)
        if guess is None:
            raise UserError(f"{args.checkpoint}: no family recognised, so no spec to write")
        args.write_spec.write_text(json.dumps(guess.spec, indent=2) + "\n")
        print(f"wrote {args.write_spec}")
    return 0


class UserError(Exception):
    """A mistake in what the user gave us; reported in one line."""


COMMANDS: dict[str, tuple[Callable[[], Parser], Callable[[argparse.Namespace], int]]] = {
    "train": (train_parser, run_train),
    "export": (export_parser, run_export),
    "inspect": (inspect_parser, run_inspect),
}


def main(command: str, argv: list[str]) -> int:
    if command == "train" and "--portable" in argv:
        pin_training_arithmetic()  # NOTE: before anything below imports torch
    from models.checkpoint import CheckpointError
    from models.export import ExportError
    from models.parity import ParityError
    from models.spec import SpecError
    from models.usermodule import UserModuleError

    make_parser, run = COMMANDS[command]
    args = make_parser().parse_args(argv)
    try:
        return run(args)
    except (UserError, CheckpointError, ExportError, ParityError, SpecError, UserModuleError) as exc:
        print(f"seqserve {command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
