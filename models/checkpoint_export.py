"""Bring your own checkpoint: a user's weights + their own module (+ a spec, or
none: it is settled from the module) -> a checked repository entry. What
``seqserve export`` runs."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch

from models.asis import export_as_is
from models.checkpoint import build_model, load_state_dict
from models.export import export_model, sha256
from models.parity import TOLERANCE
from models.reference import SEQSERVE_REFERENCE
from models.settle import Settled, complete_spec, settle
from models.spec import ModelSpec, ReferenceInputs, SpecError, Tokenizer, UserModule
from models.usermodule import UserModuleError, instantiate, user_reference


def load_spec(path: Path) -> ModelSpec:
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file (pass --spec)")
    try:
        return ModelSpec.load(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"{path}: {exc}") from None


def export_checkpoint(
    checkpoint: Path,
    spec_path: Path,
    repository: Path,
    *,
    module: UserModule | None = None,
    version: int | None = None,
    batches: int = 100,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> Path:
    """Map ``checkpoint`` onto the spec's model, export it and check every graph
    against ``module`` (else the spec's ``reference``, else seqserve's own).

    A relative module source in the spec is read beside the spec file.
    """
    spec = load_spec(spec_path)
    state = load_state_dict(checkpoint)
    model = build_model(spec, state, source=str(checkpoint))
    user = module or spec.reference
    reference, reference_name = None, SEQSERVE_REFERENCE
    if user is not None:
        # Their module gets the checkpoint as saved: their names, their dtypes.
        reference = user_reference(user, spec_path.resolve().parent, state, spec)
        reference_name = user.describe()
    source = {
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": sha256(checkpoint),
        "spec": spec_path.name,
        "reference": reference_name,
    }
    return export_model(
        model,
        repository,
        version,
        batches=batches,
        seed=seed,
        tolerance=tolerance,
        source=source,
        reference=reference,
        reference_name=reference_name,
    )


@dataclass(frozen=True)
class ModuleExport:
    """What ``export_module`` wrote and settled."""

    path: Path
    settled: Settled
    spec: ModelSpec | None
    """The spec the entry was exported with; ``None`` for an equal-length entry."""


def export_module(
    checkpoint: Path,
    module: UserModule,
    repository: Path,
    *,
    given: Mapping[str, Any] | None = None,
    tokenizer: Tokenizer | None = None,
    name: str | None = None,
    max_length: int = 256,
    version: int | None = None,
    batches: int = 100,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    base: Path | None = None,
    inputs: str | None = None,
) -> ModuleExport:
    """Export with no spec: settle the wiring from the user's module (the fields in ``given``
    kept over what is settled), export and check it against the module; when no family
    fits, export the module as it is for equal-length batching. ``inputs``: how the
    module is called, when the user said so (``--module-inputs``); else it is probed."""
    base = base or Path.cwd()
    given = dict(given or {})
    state = load_state_dict(checkpoint)
    name = given.pop("name", None) or name or _slug(checkpoint.name.split(".")[0])
    max_length = int(given.pop("max_length", max_length))
    given.pop("reference", None)
    settled = settle(module, base, state, tokenizer, inputs)
    if settled.text and tokenizer is None:
        raise SpecError(
            f"{module.describe()} embeds tokens ({settled.vocabulary_size} rows): pass its vocabulary with "
            "--vocab FILE (a JSON mapping of token to id, or one token per line) and "
            "--tokenizer char|word|regex:PATTERN"
        )
    if (
        tokenizer is not None
        and settled.vocabulary_size is not None
        and len(tokenizer.vocabulary) > settled.vocabulary_size
    ):
        raise SpecError(
            f"the vocabulary has {len(tokenizer.vocabulary)} tokens, "
            f"the module's embedding {settled.vocabulary_size} rows"
        )
    source = {
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": sha256(checkpoint),
        "spec": "settled from the module",
        "settled": settled.settled,
    }
    assert settled.inputs is not None or settled.spec is None
    if settled.spec is None:
        if settled.inputs is None:
            raise UserModuleError(f"{module.describe()}: {settled.reason}")
        user = replace(module, inputs=cast(ReferenceInputs, settled.inputs))
        obj = instantiate(user, base, state)
        if not isinstance(obj, torch.nn.Module):
            raise UserModuleError(
                f"{module.describe()}: {settled.reason}; only a torch module can be exported as it is"
            )
        spec_for_rows = _rows_spec(settled, tokenizer, max_length)
        reference = user_reference(user, base, state, spec_for_rows, strict_shape=False)
        path = export_as_is(
            obj,
            settled.inputs,
            reference,
            repository,
            name=name,
            reason=settled.reason or "",
            input_size=settled.input_size,
            tokenizer=tokenizer,
            max_length=max_length,
            given=given,
            version=version,
            batches=min(batches, 20),
            seed=seed,
            tolerance=tolerance,
            source={**source, "reference": user.describe()},
            reference_name=user.describe(),
        )
        return ModuleExport(path, settled, None)
    spec = complete_spec(settled, name, max_length, tokenizer, given)
    user = replace(module, inputs=cast(ReferenceInputs, settled.inputs or module.inputs))
    spec = replace(spec, reference=user)
    model = build_model(spec, state, source=str(checkpoint))
    reference = user_reference(user, base, state, spec)
    path = export_model(
        model,
        repository,
        version,
        batches=batches,
        seed=seed,
        tolerance=tolerance,
        source={**source, "reference": user.describe()},
        reference=reference,
        reference_name=user.describe(),
        extra_files={"spec.json": json.dumps(spec.to_dict(), indent=2) + "\n"},
    )
    return ModuleExport(path, settled, spec)


def _rows_spec(settled: Settled, tokenizer: Tokenizer | None, max_length: int) -> ModelSpec:
    """A stand-in spec for running the user's module as a reference on one sequence."""
    kind: dict[str, Any] = (
        {"input_kind": "text", "embedding_dim": 1, "tokenizer": tokenizer}
        if tokenizer is not None
        else {"input_size": settled.input_size or 1}
    )
    return ModelSpec(
        name="as-is", task="regression", cell="lstm", hidden_size=1, num_outputs=1, max_length=max_length, **kind
    )


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return slug[:64] or "model"
