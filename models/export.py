"""Export a trained ``SequenceModel`` into a model-repository entry.

``<repository>/<name>/<version>/`` gets ``model.onnx`` (one self-contained
file), ``model.pt`` (TorchScript), ``model.json`` and ``parity.json``. Both
graphs are written to a temporary folder, loaded back from disk and checked
against the reference (the user's own module when given, else seqserve's
plain module); only then is the folder renamed into place, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from pydantic import ValidationError

from models import cho
from models.cho import ChoGRUModel
from models.parity import TOLERANCE, ParityReport, Reference, check_parity, onnx_runner, torch_runner
from models.reference import SEQSERVE_REFERENCE, ReferenceModel, cho_gru_reference
from models.spec import ModelSpec
from models.stack import SequenceModel
from models.streaming import export_stream
from service.checks import metadata_problems
from service.model_json import (
    NAME_PATTERN,
    SCHEMA_VERSION,
    FormatsJson,
    GraphJson,
    InputJson,
    ModelJson,
    TokenizerJson,
    validation_problems,
)

ExportableModel = SequenceModel | ChoGRUModel

INPUT_NAME = "input"
LENGTHS_NAME = "lengths"
ONNX_OPSET = 18


class ExportError(RuntimeError):
    """The model cannot be exported as asked; nothing was written."""


# NOTE: torch ships `torch.jit.trace` and `torch.jit.load` without annotations; on a
# module (never a function) both return a ScriptModule, which is all this file uses.
_jit_trace = cast(Callable[..., torch.jit.ScriptModule], torch.jit.trace)
_jit_load = cast(Callable[..., torch.jit.ScriptModule], torch.jit.load)


def output_name(spec: ModelSpec) -> str:
    return "values" if spec.task == "regression" else "logits"


def next_version(repository: Path, name: str) -> int:
    folder = repository / name
    versions = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(versions, default=0) + 1


def example_inputs(spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch 3, lengths all different, so no axis gets specialised to a constant."""
    lengths = torch.tensor([9, 4, 6], dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    if spec.input_kind == "text":
        assert spec.tokenizer is not None
        x = torch.randint(2, len(spec.tokenizer.vocabulary), (3, 9), generator=generator)
    else:
        assert spec.input_size is not None
        x = torch.randn(3, 9, spec.input_size, generator=generator)
    return x, lengths


def write_onnx(model: ExportableModel, path: Path) -> None:
    """ONNX through the TorchScript-based exporter, with dynamic batch and time.

    NOTE: torch 2.13's default (dynamo) exporter fixes the time axis to the
    traced length whenever the first RNN layer's input is computed (an
    embedding, a normalisation), and its graph optimizer folds the second
    layer's time axis into a constant. The TorchScript-based exporter keeps
    both axes dynamic, emits native ONNX LSTM/GRU ops and exports in well
    under a second; the signature and parity checks below guard the result.
    """
    spec = model.spec
    if isinstance(model, ChoGRUModel):
        cho.write_onnx(model, path, INPUT_NAME, LENGTHS_NAME, output_name(spec), ONNX_OPSET)
        return
    x, lengths = example_inputs(spec)
    out = output_name(spec)
    dynamic = {INPUT_NAME: {0: "batch", 1: "time"}, LENGTHS_NAME: {0: "batch"}, out: {0: "batch"}}
    if spec.readout == "all":  # a tag or values per step
        dynamic[out][1] = "time"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is deprecated in 2.13 and says so at length
        torch.onnx.export(
            model,
            (x, lengths),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME, LENGTHS_NAME],
            output_names=[out],
            dynamic_axes=dynamic,
        )


def write_torchscript(model: ExportableModel, path: Path) -> None:
    x, lengths = example_inputs(model.spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in 2.13; users still deploy it
        traced = _jit_trace(model, (x, lengths), check_trace=False)
        traced.save(str(path))


def check_onnx_signature(path: Path, spec: ModelSpec) -> list[str]:
    """Names, dtypes and ranks of the graph's inputs and outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    problems = []
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    want_in = {
        INPUT_NAME: (
            "tensor(int64)" if spec.input_kind == "text" else "tensor(float)",
            2 if spec.input_kind == "text" else 3,
        ),
        LENGTHS_NAME: ("tensor(int64)", 1),
    }
    for name, (dtype, rank) in want_in.items():
        got = inputs.get(name)
        if got is None:
            problems.append(f"graph input {name!r} missing (has {sorted(inputs)})")
        elif got.type != dtype or len(got.shape) != rank:
            problems.append(f"graph input {name!r} is {got.type} rank {len(got.shape)}, expected {dtype} rank {rank}")
        elif any(isinstance(d, int) for d in got.shape[: 2 if rank > 1 else 1]):
            problems.append(f"graph input {name!r} has a fixed batch or time axis: {got.shape}")
    if list(outputs) != [output_name(spec)]:
        problems.append(f"graph outputs {sorted(outputs)}, expected [{output_name(spec)!r}]")
    return problems


def model_json(
    spec: ModelSpec,
    version: int,
    formats: FormatsJson,
    parity: ParityReport,
    provenance: dict[str, Any],
    reference: str = SEQSERVE_REFERENCE,
) -> ModelJson:
    """The entry's model.json: the sections the server reads, typed and validated by the
    server's own schema; the informational ones (architecture, family, metrics, parity,
    provenance) as its extras. Raises pydantic's ValidationError if the server would refuse it."""
    tokenizer = None
    if spec.tokenizer is not None:
        t = spec.tokenizer
        tokenizer = TokenizerJson(
            type=t.type,
            lowercase=t.lowercase,
            vocabulary=t.vocabulary,
            padding_id=t.padding_id,
            unknown_id=t.unknown_id,
            pattern=t.pattern,
        )
    informational: dict[str, Any] = {
        "architecture": {
            "cell": spec.cell,
            "bidirectional": spec.bidirectional,
            "num_layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "proj_size": spec.proj_size,
            "readout": spec.readout,
            "embedding_dim": spec.embedding_dim,
            "head_hidden": spec.head_hidden,
            "preprocessing": {
                "input_normalization": "in graph" if spec.input_normalization else None,
                "output_normalization": "in graph" if spec.output_normalization else None,
            },
            "input_mlp": list(spec.input_mlp),
            "input_layers": list(spec.input_layers),
            "head_layers": None if spec.head_layers is None else list(spec.head_layers),
            "output_activation": spec.output_activation,
            "activation": spec.activation,
            "layer_norm": spec.layer_norm,
            "concat_input_mean": spec.concat_input_mean,
            "direction_stacks": "separate" if spec.separate_directions else "interleaved",
            "gru_form": ("cho" if spec.family == "F9" else "torch") if spec.cell == "gru" else None,
        },
        "family": spec.family,
        "metrics": spec.metrics,
        "parity": {"tolerance": parity.tolerance, "max_abs_diff": parity.max_abs_diff, "reference": reference},
        "provenance": provenance,
    }
    return ModelJson(
        schema_version=SCHEMA_VERSION,
        name=spec.name,
        version=version,
        task=spec.task,
        description=spec.description,
        input=InputJson(
            kind=spec.input_kind,
            features=spec.input_size if spec.input_kind == "features" else None,
            max_length=spec.max_length,
            tokenizer=tokenizer,
        ),
        labels=spec.labels,
        output_names=spec.output_names,
        graph=GraphJson(
            input=INPUT_NAME,
            lengths=LENGTHS_NAME,
            output=output_name(spec),
            input_dtype="int64" if spec.input_kind == "text" else "float32",
            output_activation=served_activation(spec),
        ),
        padding="exact",
        formats=formats,
        **informational,
    )


def served_activation(spec: ModelSpec) -> Literal["softmax", "none", "exp"]:
    """What the server applies to the graph's answer for probabilities: softmax of logits, nothing
    when the module answers probabilities itself (softmax, sigmoid), exp of log-probabilities."""
    if spec.task == "regression" or spec.output_activation in ("softmax", "sigmoid"):
        return "none"
    return "exp" if spec.output_activation == "log_softmax" else "softmax"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seqserve_reference(model: ExportableModel) -> Reference:
    """seqserve's own plain module, run on one sequence at a time."""
    if isinstance(model, ChoGRUModel):
        numpy_reference = cho_gru_reference(model)
        return lambda seq: numpy_reference(seq)
    reference = ReferenceModel(model)

    def run(seq: np.ndarray) -> np.ndarray:
        out: torch.Tensor = reference(torch.from_numpy(seq).unsqueeze(0))[0]
        return out.numpy().astype(np.float64)

    return run


def export_model(
    model: ExportableModel,
    repository: Path,
    version: int | None = None,
    *,
    batches: int = 100,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    source: dict[str, Any] | None = None,
    reference: Reference | None = None,
    reference_name: str = SEQSERVE_REFERENCE,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``<repository>/<name>/<version>/`` or raise with nothing written.

    ``extra_files`` (name -> text) are written beside the graphs (the settled spec).

    ``reference`` answers for one unpadded sequence (the user's own module);
    without it, seqserve's plain module does, and ``model.json`` says which.
    Raises ``ExportError`` for a bad name, version or graph signature and
    ``ParityError`` when a graph's answers differ from the reference.
    """
    if reference is None:
        reference, reference_name = seqserve_reference(model), SEQSERVE_REFERENCE
    spec = model.spec
    if batches < 1:
        raise ExportError("batches: need at least one parity batch")
    model = model.eval()
    with staged_entry(repository, spec.name, version) as (staging, version, final):
        onnx_path, ts_path = staging / "model.onnx", staging / "model.pt"
        write_onnx(model, onnx_path)
        write_torchscript(model, ts_path)
        problems = check_onnx_signature(onnx_path, spec)
        if problems:
            raise ExportError("ONNX graph signature: " + "; ".join(problems))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded_ts = _jit_load(str(ts_path))
        graphs = {
            "eager": torch_runner(model),
            "onnx": onnx_runner(str(onnx_path), INPUT_NAME, LENGTHS_NAME),
            "torchscript": torch_runner(loaded_ts),
        }
        report = check_parity(
            spec, graphs, reference, batches=batches, seed=seed, tolerance=tolerance, reference_name=reference_name
        )
        stream = export_stream(
            model, staging, reference, reference_name, batches=batches, seed=seed, tolerance=tolerance
        )
        formats = FormatsJson(onnx=onnx_path.name, torchscript=ts_path.name)
        provenance = {
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "exporter": "seqserve export",
            "torch": torch.__version__,
            "onnx_opset": _opset(onnx_path),
            "files_sha256": {path.name: sha256(path) for path in (onnx_path, ts_path, *stream.files)},
            **(source or {}),
            **spec.provenance,
        }
        try:
            meta = stream.apply(model_json(spec, version, formats, report, provenance, reference_name))
        except ValidationError as exc:
            raise ExportError(f"model.json would be refused by the server: {validation_problems(exc)}") from exc
        refused = metadata_problems(meta)
        if refused:
            raise ExportError(f"model.json would be refused by the server: {'; '.join(refused)}")
        (staging / "model.json").write_text(meta.to_json())
        (staging / "parity.json").write_text(json.dumps(report.to_dict() | stream.parity(), indent=2) + "\n")
        for file_name, text in (extra_files or {}).items():
            (staging / file_name).write_text(text)
    return final


@contextlib.contextmanager
def staged_entry(repository: Path, name: str, version: int | None = None) -> Iterator[tuple[Path, int, Path]]:
    """A staging folder for ``<repository>/<name>/<version>/`` (the next free version when None): yields it,
    the version and the final path; renamed into place when the block ends without an exception, removed
    either way. Raises ``ExportError`` for a bad name or a version that exists."""
    if not NAME_PATTERN.match(name):
        raise ExportError(f"name {name!r}: use lowercase letters, digits, '.', '_' or '-' (max 64)")
    repository.mkdir(parents=True, exist_ok=True)
    version = version or next_version(repository, name)
    final = repository / name / str(version)
    if final.exists():
        raise ExportError(f"{final} exists already; versions are immutable, export as a new version")
    # Same filesystem as the destination, so the final rename is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repository))
    try:
        yield staging, version, final
        os.chmod(staging, 0o755)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _opset(path: Path) -> int | None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
