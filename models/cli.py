"""``seqserve train | export | inspect | add``: the offline commands.

Every failure a user can cause ends in one line on stderr naming the problem,
and a non-zero exit status; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

if TYPE_CHECKING:
    from models.spec import Tokenizer, UserModule
    from service.model_json import TokenizerJson

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
    p.add_argument(
        "--spec",
        type=Path,
        help="model spec, JSON or YAML (default: <checkpoint>.spec.json beside it, if there); with --module it may "
        "give only some fields (name, labels, task, max_length, ...), the rest is settled from the module",
    )
    p.add_argument(
        "--module",
        metavar="FILE.py:CLASS",
        help="your own model class: with no spec, seqserve reads it and settles the spec by running it; "
        "parity is always checked against it",
    )
    p.add_argument("--module-kwargs", metavar="JSON", help="constructor arguments for --module, a JSON object")
    p.add_argument(
        "--module-inputs",
        choices=["batch", "batch_and_lengths", "sequence", "time_major", "time_major_and_lengths"],
        help="how --module is called on one sequence x: module(x[None]), module(x[None], lengths), module(x), "
        "module(x[:, None]) time first (default: the spec's; with no spec, settled by probing)",
    )
    add_settle_arguments(p)
    p.add_argument(
        "--repository", type=Path, default=Path("repository"), help="model repository (default: %(default)s)"
    )
    p.add_argument("--version", type=int, help="version to write (default: the next free one)")
    p.add_argument(
        "--parity-batches", type=int, default=100, help="random mixed-length batches to check (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the parity batches (default: %(default)s)")
    return p


def add_settle_arguments(p: Parser) -> None:
    p.add_argument("--name", help="model name in the repository, with no spec (default: the checkpoint's file name)")
    p.add_argument("--max-length", type=int, help="longest sequence served, with no spec (default: 256)")
    p.add_argument(
        "--vocab",
        type=Path,
        metavar="FILE",
        help="text models with no spec: your vocabulary, a JSON mapping of token to id (or a list), or one token "
        "per line",
    )
    p.add_argument(
        "--tokenizer",
        default="char",
        metavar="char|word|regex:PATTERN",
        help="how your tokenizer splits text: characters, whitespace-separated words, or re.findall(PATTERN) "
        "(default: %(default)s)",
    )
    p.add_argument("--lowercase", action="store_true", help="your tokenizer lowercases text first (default: case kept)")
    p.add_argument(
        "--unknown-token",
        metavar="TOKEN",
        help="the vocabulary's token for text outside it (default: <unk>, [UNK], ...)",
    )


def inspect_parser() -> Parser:
    p = Parser(
        prog="seqserve inspect",
        description="List a checkpoint's tensors and what it looks like; with --module, settle the spec from your "
        "module as export would, and say what could not be settled and why.",
    )
    p.add_argument("checkpoint", type=Path, help="a state_dict (.pt) or an .npz of arrays")
    p.add_argument("--module", metavar="FILE.py:CLASS", help="your own model class, to settle the spec from")
    p.add_argument("--module-kwargs", metavar="JSON", help="constructor arguments for --module, a JSON object")
    p.add_argument("--module-inputs", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    add_settle_arguments(p)
    p.add_argument("--write-spec", type=Path, metavar="PATH", help="also write the suggested spec to PATH (JSON)")
    return p


def add_parser() -> Parser:
    p = Parser(
        prog="seqserve add",
        description="Add an ONNX or TorchScript graph you exported yourself as <repository>/<name>/<version>/: "
        "its inputs and outputs are read from the file, the rest probed (vocabulary size, exact padding, "
        "an output already a distribution); the entry is checked as `seqserve validate` checks and written "
        "only when it passes.",
    )
    p.add_argument("graph", type=Path, help="model.onnx, or a TorchScript file (torch.jit.script or trace) .pt")
    p.add_argument("--repository", type=Path, required=True, help="model repository")
    p.add_argument("--name", required=True, help="model name: lowercase letters, digits, '.', '_' or '-'")
    p.add_argument(
        "--task",
        choices=["classification", "tagging", "regression"],
        help="what the output is (default: tagging for a per-step output, classification with --labels)",
    )
    p.add_argument("--labels", help="class names in the output's order, comma-separated (or @FILE, one per line)")
    p.add_argument("--output-names", help="regression: a name per output value, comma-separated")
    p.add_argument(
        "--max-length", type=int, help="longest sequence served (default: the graph's fixed time axis, else 512)"
    )
    p.add_argument("--features", type=int, help="input width, when neither the graph nor its layers fix it")
    p.add_argument("--vocabulary-size", type=int, help="token ids 0..N-1 (default: probed from the graph's embedding)")
    p.add_argument("--padding-id", type=int, default=0, help="token id padded sequences are filled with (default: 0)")
    p.add_argument(
        "--vocabulary",
        type=Path,
        metavar="FILE.json",
        help="text models: a JSON array of characters in id order; the server then tokenizes text (ids pad with "
        "--padding-id)",
    )
    p.add_argument("--lowercase", action="store_true", help="text models: lowercase text before looking it up")
    p.add_argument(
        "--unknown-id",
        type=int,
        help="text models: the id of characters outside the vocabulary (default: such text is refused, 422)",
    )
    p.add_argument("--output", help="ONNX: the output to serve, when the graph has several (default: the first)")
    p.add_argument("--version", type=int, help="version to write (default: the next free one)")
    p.add_argument("--description", default="", help="a line for the model's metadata")
    p.add_argument("--dry-run", action="store_true", help="probe and check, print the model.json, write nothing")
    return p


def _names(value: str | None) -> tuple[str, ...] | None:
    """A comma-separated list, or @FILE with one name per line."""
    if value is None:
        return None
    if value.startswith("@"):
        try:
            lines = Path(value[1:]).read_text().splitlines()
        except OSError as exc:
            raise UserError(f"{value}: {exc.strerror}") from None
        return tuple(line.strip() for line in lines if line.strip())
    return tuple(name.strip() for name in value.split(","))


def _tokenizer(args: argparse.Namespace) -> TokenizerJson | None:
    """The character tokenizer `--vocabulary` and its flags describe."""
    from pydantic import ValidationError

    from service.model_json import TokenizerJson, validation_problems

    if args.vocabulary is None:
        if args.lowercase or args.unknown_id is not None:
            raise UserError("--lowercase and --unknown-id need --vocabulary")
        return None
    try:
        vocabulary = json.loads(args.vocabulary.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--vocabulary {args.vocabulary}: {exc}") from None
    if not isinstance(vocabulary, list) or not all(isinstance(entry, str) for entry in vocabulary):
        raise UserError(f"--vocabulary {args.vocabulary}: expected a JSON array of strings, in id order")
    try:
        return TokenizerJson(
            type="char",
            lowercase=args.lowercase,
            vocabulary=tuple(vocabulary),
            padding_id=args.padding_id,
            unknown_id=args.padding_id if args.unknown_id is None else args.unknown_id,
            unknown="reject" if args.unknown_id is None else "map",
        )
    except ValidationError as exc:
        raise UserError(f"--vocabulary: {validation_problems(exc)}") from None


def run_add(args: argparse.Namespace) -> int:
    from models.add import add_graph

    added = add_graph(
        args.graph,
        args.repository,
        args.name,
        task=args.task,
        labels=_names(args.labels),
        output_names=_names(args.output_names),
        max_length=args.max_length,
        features=args.features,
        vocabulary_size=args.vocabulary_size,
        padding_id=args.padding_id,
        output=args.output,
        version=args.version,
        description=args.description,
        tokenizer=_tokenizer(args),
        dry_run=args.dry_run,
    )
    print("\n".join(added.summary))
    if args.dry_run:
        print(added.spec.to_json(), end="")
    return 0


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


def given_fields(path: Path | None) -> dict[str, Any] | None:
    """A spec file's fields as written, or ``None`` without one."""
    if path is None or not path.is_file():
        return None
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path}: not JSON or YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a spec is a mapping of fields")
    return data


def tokenizer_from_args(args: argparse.Namespace) -> Tokenizer | None:
    from models.vocab import load_tokenizer

    if args.vocab is None:
        return None
    return load_tokenizer(args.vocab, args.tokenizer, lowercase=args.lowercase, unknown_token=args.unknown_token)


def run_export(args: argparse.Namespace) -> int:
    from models.checkpoint_export import export_checkpoint, load_spec
    from models.spec import ModelSpec
    from models.streaming import describe as describe_streaming

    spec_path = args.spec or default_spec_path(args.checkpoint)
    given = given_fields(spec_path)
    if args.spec is not None and given is None:
        raise UserError(f"{args.spec}: no such spec file")
    complete = False
    if given is not None:
        try:
            ModelSpec.from_dict(given)
            complete = True
        except (ValueError, TypeError, KeyError):
            complete = False
    if not complete:
        if args.module is None:
            if given is not None:
                load_spec(spec_path)  # raises, naming the field
            raise UserError(
                f"no spec ({spec_path} is not there): pass --module FILE.py:CLASS (your model class) and seqserve "
                "settles the spec from it, or --spec"
            )
        return export_zero_spec(args, given or {})
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


def export_zero_spec(args: argparse.Namespace, given: dict[str, Any]) -> int:
    import time

    from models.checkpoint_export import export_module
    from models.streaming import describe as describe_streaming
    from models.vocab import describe_tokenizer

    user = user_module(args, None)
    assert user is not None
    if args.name:
        given["name"] = args.name
    if args.max_length:
        given["max_length"] = args.max_length
    tokenizer = tokenizer_from_args(args)
    started = time.monotonic()
    result = export_module(
        args.checkpoint,
        user,
        args.repository,
        given=given,
        tokenizer=tokenizer,
        version=args.version,
        batches=args.parity_batches,
        seed=args.seed,
        inputs=args.module_inputs,
    )
    for line in result.settled.settled:
        print(f"settled: {line}")
    if tokenizer is not None:
        print(describe_tokenizer(tokenizer))
    parity = json.loads((result.path / "parity.json").read_text())
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in parity["max_abs_diff"].items())
    if result.spec is None:
        print(
            f"note: served by batching equal lengths only; padded batching needs a recognised shape, "
            f"and {result.settled.reason}"
        )
        meta = json.loads((result.path / "model.json").read_text())
        for problem in meta["provenance"].get("not_exported", []):
            print(f"note: not written: {problem}")
    else:
        print(f"spec: {result.path / 'spec.json'} (export again with --spec to repeat it; edit it to change it)")
    print(
        f"wrote {result.path} in {time.monotonic() - started:.1f} s (parity against {user.describe()} over "
        f"{parity['sequences']} sequences in {parity['batches']} batches: {diffs})"
    )
    print(describe_streaming(result.path))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from models.checkpoint import load_state_dict
    from models.inspect import describe, guess_family

    state = load_state_dict(args.checkpoint)
    name = args.checkpoint.name.split(".")[0]
    if args.module is not None:
        return inspect_module(args, state, name)
    print(describe(state, name))
    if args.write_spec is not None:
        guess = guess_family(state, name)
        if guess is None:
            raise UserError(f"{args.checkpoint}: no family recognised, so no spec to write")
        args.write_spec.write_text(json.dumps(guess.spec, indent=2) + "\n")
        print(f"wrote {args.write_spec}")
    return 0


def inspect_module(args: argparse.Namespace, state: Any, name: str) -> int:
    from models.settle import complete_spec, describe, settle
    from models.spec import ReferenceInputs
    from models.vocab import describe_tokenizer

    user = user_module(args, None)
    assert user is not None
    tokenizer = tokenizer_from_args(args)
    settled = settle(user, Path.cwd(), state, tokenizer, args.module_inputs)
    print(describe(settled))
    if settled.spec is None:
        print("export would serve it as it is, batching equal lengths only")
        return 0
    if settled.text:
        if tokenizer is None:
            print(
                f"not settled: the tokenizer. The embedding has {settled.vocabulary_size} rows; pass --vocab FILE "
                "(JSON mapping or one token per line) and --tokenizer char|word|regex:PATTERN, --lowercase if "
                "your tokenizer lowercases"
            )
            return 0
        print(describe_tokenizer(tokenizer))
    spec = complete_spec(settled, args.name or name, args.max_length or 256, tokenizer)
    spec = replace(spec, reference=replace(user, inputs=cast(ReferenceInputs, settled.inputs or user.inputs)))
    text = json.dumps(spec.to_dict(), indent=2)
    print(text)
    if args.write_spec is not None:
        args.write_spec.write_text(text + "\n")
        print(f"wrote {args.write_spec}")
    return 0


class UserError(Exception):
    """A mistake in what the user gave us; reported in one line."""


COMMANDS: dict[str, tuple[Callable[[], Parser], Callable[[argparse.Namespace], int]]] = {
    "train": (train_parser, run_train),
    "export": (export_parser, run_export),
    "inspect": (inspect_parser, run_inspect),
    "add": (add_parser, run_add),
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
