"""``seqserve add``: a graph exported elsewhere becomes a repository entry, with no model.json written by hand.

Reads an ONNX file (``torch.onnx.export``, tf2onnx, ...) or a TorchScript file (``torch.jit.script`` or
``torch.jit.trace``): its inputs and outputs, their dtypes and dynamic axes. Probes it, with small batches
on the CPU, for what the file does not say: how many token ids its embedding takes, how many values it
answers and whether per step, whether that answer is already a probability distribution (then no softmax
is applied over it), and whether a padded batch of mixed lengths answers like each sequence alone
(``padding: exact``; else ``equal-length``, batched only with sequences of one length). Flags supply only
what no probe can tell: the task and the labels. The entry is written as ``seqserve export`` writes one:
in a staging folder, checked as ``seqserve validate`` checks every entry, and renamed into place only when
every check passes.
"""

from __future__ import annotations

import datetime as dt
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np

from models.export import ExportError, sha256, staged_entry
from service.checks import (
    EXACT_TOLERANCE,
    embedding_rows,
    output_is_distribution,
    padding_error,
    sample_batch,
)
from service.model_json import (
    SCHEMA_VERSION,
    FormatsJson,
    GraphJson,
    InputDtype,
    InputJson,
    ModelJson,
    RuntimeKind,
    Task,
    TokenizerJson,
)
from service.runtime import Runtime
from service.validate import entry_problems

DEFAULT_MAX_LENGTH = 512
"""The longest sequence served when the graph fixes no time axis and ``--max-length`` is not given."""

_ONNX_DTYPES: dict[str, InputDtype] = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}
_RNN_MODULES = {"LSTM", "GRU", "RNN"}
_CELL_MODULES = {"LSTMCell", "GRUCell", "RNNCell"}


class AddError(ExportError):
    """The graph can't be added as asked; nothing was written."""


class _DryRun(Exception):
    """Leaves the staged entry unwritten, every check done."""


@dataclass(frozen=True)
class Signature:
    """What the graph file says about its inputs and outputs."""

    format: RuntimeKind
    input: str
    input_dtype: InputDtype
    features: int | None
    lengths: str | None
    output: str
    fixed_length: int | None
    vocabulary_hint: int | None  # the embedding's rows, when the file shows them
    described: str  # one line for the summary


@dataclass(frozen=True)
class Added:
    path: Path
    spec: ModelJson
    summary: list[str]


def _shape(shape: Any) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _dtype(onnx_type: str) -> str:
    """`tensor(float)` as `float32`, `tensor(int32)` as `int32`."""
    name = onnx_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(name, name)


def read_onnx(path: Path, output: str | None = None, features: int | None = None) -> Signature:
    """The sequence input, its optional lengths input and the output of an ONNX graph."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise AddError(f"{path}: ONNX Runtime cannot open it ({_first_line(exc)})") from None
    inputs = session.get_inputs()
    described = ", ".join(f"'{i.name}' {_dtype(i.type)} {_shape(i.shape)}" for i in inputs)
    sequences = [
        i
        for i in inputs
        if (i.type == "tensor(float)" and len(i.shape) == 3)
        or (i.type in ("tensor(int64)", "tensor(int32)") and len(i.shape) == 2)
    ]
    lengths = [i for i in inputs if i.type in ("tensor(int64)", "tensor(int32)") and len(i.shape) == 1]
    if len(sequences) != 1 or len(lengths) > 1 or len(inputs) != len(sequences) + len(lengths):
        raise AddError(
            f"{path}: graph inputs {described}: seqserve feeds one sequence input (float32 [batch, time, features] "
            "or int32/int64 token ids [batch, time]) and optionally int64 or int32 lengths [batch]"
        )
    main = sequences[0]
    dtype = _ONNX_DTYPES[main.type]
    if dtype == "float32":
        axis = main.shape[2]
        if isinstance(axis, int) and features is not None and features != axis:
            raise AddError(f"--features {features}: the graph's input '{main.name}' takes {axis}")
        if not isinstance(axis, int) and features is None:
            raise AddError(f"input '{main.name}' {_shape(main.shape)} has no fixed feature axis: give --features")
        features = axis if isinstance(axis, int) else features
    names = [o.name for o in session.get_outputs()]
    if output is not None and output not in names:
        raise AddError(f"--output {output!r}: the graph's outputs are {', '.join(names)}")
    chosen = output or names[0]
    out = next(o for o in session.get_outputs() if o.name == chosen)
    time = main.shape[1]
    return Signature(
        format="onnx",
        input=main.name,
        input_dtype=dtype,
        features=features if dtype == "float32" else None,
        lengths=lengths[0].name if lengths else None,
        output=chosen,
        fixed_length=time if isinstance(time, int) and time > 0 else None,
        vocabulary_hint=None,
        described=f"inputs {described}; output '{out.name}' {_dtype(out.type)} {_shape(out.shape)}"
        + (f" (of {', '.join(names)})" if len(names) > 1 else ""),
    )


def read_torchscript(path: Path, features: int | None = None) -> Signature:
    """The arguments of a TorchScript module's ``forward`` and, from its submodules, what it takes:
    token ids when it has an ``nn.Embedding``, else feature vectors as wide as its first recurrent layer."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in 2.13; users still deploy it
            load = cast(Callable[..., Any], torch.jit.load)
            module = load(str(path), map_location="cpu")
    except Exception as exc:
        raise AddError(f"{path}: not a TorchScript file torch.jit.load reads ({_first_line(exc)})") from None
    arguments = [a.name for a in module.forward.schema.arguments][1:]  # after self
    if len(arguments) not in (1, 2):
        raise AddError(f"{path}: forward({', '.join(arguments)}): seqserve calls forward(x) or forward(x, lengths)")
    embedding_rows_read: int | None = None
    width: int | None = None
    for _, sub in module.named_modules():
        kind = getattr(sub, "original_name", "")
        if kind == "Embedding" and embedding_rows_read is None and width is None:
            embedding_rows_read = int(sub.weight.shape[0])
        elif kind in _RNN_MODULES and width is None:
            width = int(sub.weight_ih_l0.shape[1])
        elif kind in _CELL_MODULES and width is None:
            width = int(sub.weight_ih.shape[1])
    tokens = embedding_rows_read is not None
    if not tokens:
        if features is None and width is None:
            raise AddError(
                f"{path}: no nn.Embedding and no recurrent layer to read the input width from: give --features"
            )
        features = features or width
    taken = "token ids [batch, time] (int64)" if tokens else f"float32 [batch, time, {features}]"
    lengths = arguments[1] if len(arguments) == 2 else None
    return Signature(
        format="torchscript",
        input=arguments[0],
        input_dtype="int64" if tokens else "float32",
        features=None if tokens else features,
        lengths=lengths,
        output="output",
        fixed_length=None,
        vocabulary_hint=embedding_rows_read,
        described=f"forward({', '.join(arguments)}): '{arguments[0]}' {taken}"
        + (f", '{lengths}' int64 [batch]" if lengths else ""),
    )


def _draft(
    signature: Signature, name: str, version: int, max_length: int, vocabulary_size: int, padding_id: int
) -> ModelJson:
    """model.json before the probes: the input as read, answers taken as raw values, equal-length padding."""
    tokens = signature.input_dtype != "float32"
    return ModelJson(
        schema_version=SCHEMA_VERSION,
        name=name,
        version=version,
        task="regression",
        input=InputJson(
            kind="tokens" if tokens else "features",
            features=signature.features,
            max_length=max_length,
            vocabulary_size=vocabulary_size if tokens else None,
            padding_id=padding_id if tokens else 0,
        ),
        graph=GraphJson(
            input=signature.input,
            lengths=signature.lengths,
            output=signature.output,
            input_dtype=signature.input_dtype,
        ),
        padding="equal-length",
        formats=FormatsJson(**{signature.format: "model.onnx" if signature.format == "onnx" else "model.pt"}),
    )


def _open(signature: Signature, path: Path, spec: ModelJson) -> Runtime:
    if signature.format == "onnx":
        from service.runtime.onnx import OnnxRuntime

        return OnnxRuntime(path, spec, device="cpu", threads=1, concurrency=1)
    from service.runtime.torchscript import TorchScriptRuntime

    return TorchScriptRuntime(path, spec, device="cpu", threads=0)


def add_graph(
    graph: Path,
    repository: Path,
    name: str,
    *,
    task: Task | None = None,
    labels: tuple[str, ...] | None = None,
    output_names: tuple[str, ...] | None = None,
    max_length: int | None = None,
    features: int | None = None,
    vocabulary_size: int | None = None,
    padding_id: int = 0,
    output: str | None = None,
    version: int | None = None,
    description: str = "",
    tokenizer: TokenizerJson | None = None,
    dry_run: bool = False,
) -> Added:
    """Write ``<repository>/<name>/<version>/`` for ``graph`` (``.onnx``, or TorchScript ``.pt``/``.pth``), or raise
    ``AddError`` with nothing written. ``tokenizer``: the server tokenizes text into the graph's token ids with it.
    ``dry_run``: every check, then nothing written either."""
    if not graph.is_file():
        raise AddError(f"{graph}: no such file")
    if task is not None and task not in get_args(Task):
        raise AddError(f"--task {task!r}: one of {', '.join(get_args(Task))}")
    suffix = graph.suffix.lower()
    if suffix == ".onnx":
        signature = read_onnx(graph, output, features)
    elif suffix in (".pt", ".pth", ".ts", ".torchscript"):
        if output is not None:
            raise AddError("--output names an ONNX output; a TorchScript module answers its first output")
        signature = read_torchscript(graph, features)
    else:
        raise AddError(f"{graph}: expected an ONNX file (.onnx) or a TorchScript file (.pt)")
    summary = [f"read {graph.name}: {signature.described}"]
    if max_length is None:
        max_length = signature.fixed_length or DEFAULT_MAX_LENGTH
    elif signature.fixed_length is not None and max_length != signature.fixed_length:
        raise AddError(f"--max-length {max_length}: the graph's time axis is fixed to {signature.fixed_length}")
    tokens = signature.input_dtype != "float32"
    if tokenizer is not None:
        if not tokens:
            raise AddError("--vocabulary: the graph takes float features, not token ids")
        vocabulary_size, padding_id = vocabulary_size or len(tokenizer.vocabulary), tokenizer.padding_id

    draft = _draft(signature, name, 1, max_length, vocabulary_size or 2, padding_id)
    runtime = _open(signature, graph, draft)
    if tokens:
        rows = embedding_rows(draft, runtime, guess=vocabulary_size or signature.vocabulary_hint or 2)
        if vocabulary_size is None:
            if rows is None:
                raise AddError(
                    "the graph takes every token id tried (up to 16777216), so its vocabulary size can't be "
                    "probed: give --vocabulary-size"
                )
            vocabulary_size = rows
            summary.append(f"token ids: the embedding takes ids 0..{rows - 1} (vocabulary_size {rows}, probed)")
        if padding_id >= vocabulary_size:
            raise AddError(f"--padding-id {padding_id}: outside the vocabulary (0..{vocabulary_size - 1})")
        if tokenizer is not None and rows is not None and rows != len(tokenizer.vocabulary):
            raise AddError(
                f"--vocabulary has {len(tokenizer.vocabulary)} entries but the graph's embedding has {rows} rows "
                f"(ids 0..{rows - 1}): ids and rows would not line up"
            )
        draft = _draft(signature, name, 1, max_length, vocabulary_size, padding_id)
        if tokenizer is not None:
            text = InputJson(kind="text", max_length=max_length, tokenizer=tokenizer)
            draft = draft.model_copy(update={"input": text})
            policy = (
                "refused (422)" if tokenizer.unknown == "reject" else f"served as unknown_id {tokenizer.unknown_id}"
            )
            lowercase = "on" if tokenizer.lowercase else "off"
            summary.append(
                f"text: a vocabulary of {len(tokenizer.vocabulary)} characters, lowercase {lowercase}; "
                f"characters outside it are {policy}"
            )

    time = signature.fixed_length or min(4, max_length)
    batch, lengths = sample_batch(draft, [time] * (runtime.fixed_batch or 2))
    try:
        out = np.asarray(runtime.predict(batch, lengths if draft.uses_lengths else None))
    except Exception as exc:
        raise AddError(f"the graph failed on a batch of {list(batch.shape)}: {_first_line(exc)}") from None
    task, columns = _task(out, task, labels, output_names)
    spec_fields: dict[str, Any] = {"task": task, "labels": labels, "output_names": output_names}
    draft = draft.model_copy(update=spec_fields)

    activation = "none"
    try:
        if task != "regression":
            if output_is_distribution(draft, runtime):
                summary.append(f"output: already a probability distribution over {columns} classes: no softmax applied")
            else:
                activation = "softmax"
                step = " per step" if task == "tagging" else ""
                summary.append(f"output: {columns} raw scores{step}: softmax applied")
        padding, note = _padding(draft, runtime)
    except Exception as exc:  # e.g. a graph that can't take a sequence of one step
        raise AddError(f"the graph failed on a probe batch: {_first_line(exc)}") from None
    summary.append(note)

    graph_json = draft.graph.model_copy(update={"output_activation": activation})
    written = True
    try:
        with staged_entry(repository, name, version) as (staging, version, final):
            file = staging / ("model.onnx" if signature.format == "onnx" else "model.pt")
            _copy_graph(graph, file, signature.format)
            spec = ModelJson.model_validate(
                {
                    **draft.model_dump(mode="json"),
                    **spec_fields,
                    "version": version,
                    "description": description,
                    "graph": graph_json.model_dump(mode="json"),
                    "padding": padding,
                    "source": {"file": graph.name, "sha256": sha256(graph), "format": signature.format},
                    "provenance": {
                        "added_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "exporter": "seqserve add",
                    },
                }
            )
            (file.parent / "model.json").write_text(spec.to_json())
            problems, _ = entry_problems(name, version, staging)
            if problems:
                raise AddError("the entry would be refused: " + "; ".join(problems))
            if dry_run:
                raise _DryRun
    except _DryRun:
        written = False
    what = f"{len(labels)} labels" if labels else f"{columns} values"
    verb = "wrote" if written else "checked, not written (--dry-run):"
    summary.append(f"{verb} {final} (task {task}, {what}, max_length {max_length}, padding {padding})")
    return Added(final, spec, summary)


def _task(
    out: np.ndarray, task: Task | None, labels: tuple[str, ...] | None, output_names: tuple[str, ...] | None
) -> tuple[Task, int]:
    """The task, from the output's shape and the flags given; and the output's width."""
    per_step = out.ndim == 3
    columns = int(out.shape[-1]) if out.ndim >= 2 else 1
    if out.ndim > 3:
        raise AddError(
            f"the graph answers a batch with shape {list(out.shape)}: expected [batch, C] or [batch, time, C]"
        )
    if task is None:
        if per_step:
            task = "tagging"
        elif labels is not None:
            task = "classification"
        elif output_names is not None:
            task = "regression"
        else:
            raise AddError(
                f"the graph answers {columns} values per sequence: give --task classification --labels "
                f"({columns} names), or --task regression"
            )
    if per_step != (task == "tagging"):
        shape = "per step" if per_step else "per sequence"
        raise AddError(f"--task {task}: the graph answers {shape} (shape {list(out.shape)})")
    if task == "regression":
        if output_names is not None and len(output_names) != columns:
            raise AddError(f"--output-names: {len(output_names)} names, the graph answers {columns} values")
        return task, columns
    if labels is None:
        step = " per step" if per_step else ""
        raise AddError(f"the graph answers {columns} classes{step}: give --labels with {columns} names, in its order")
    if len(labels) != columns:
        raise AddError(f"--labels: {len(labels)} names, the graph answers {columns} classes")
    return task, columns


def _padding(spec: ModelJson, runtime: Runtime) -> tuple[str, str]:
    """`exact` when a padded batch of mixed lengths answers like each sequence alone, else `equal-length`."""
    measured = padding_error(spec.model_copy(update={"padding": "exact"}), runtime)
    if measured is None:
        return "equal-length", "padding: equal-length (the graph fixes its batch or time axis)"
    worst, scale = measured
    pad = "zeros" if spec.input.kind == "features" else f"id {spec.input.pad_value}"
    fed = "with lengths" if spec.uses_lengths else f"padded with {pad}, no lengths input"
    if worst <= EXACT_TOLERANCE * max(1.0, scale):
        return (
            "exact",
            f"padding: exact (a padded batch of mixed lengths, {fed}, answers like each sequence alone: "
            f"worst {worst:.1e})",
        )
    return "equal-length", (
        f"padding: equal-length (a padded batch of mixed lengths, {fed}, answers up to {worst:.1e} away from each "
        "sequence alone; batched only with sequences of one length)"
    )


def _copy_graph(source: Path, target: Path, kind: RuntimeKind) -> None:
    """Copy the graph into the entry as one file; ONNX weights kept beside the graph (external data, as
    torch's default exporter writes them) are folded in."""
    if kind == "onnx":
        import onnx

        model = onnx.load(str(source), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            onnx.save_model(onnx.load(str(source)), str(target), save_as_external_data=False)
            return
    shutil.copyfile(source, target)
