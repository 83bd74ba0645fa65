"""Bring your own checkpoint: a user's weights + a spec (+ their own module)
-> a checked repository entry. What ``seqserve export`` runs."""

from __future__ import annotations

from pathlib import Path

from models.checkpoint import build_model, load_state_dict
from models.export import export_model, sha256
from models.parity import TOLERANCE
from models.reference import SEQSERVE_REFERENCE
from models.spec import ModelSpec, SpecError, UserModule
from models.usermodule import user_reference


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
