"""Load a user's checkpoint safely and fit it onto a ``SequenceModel``.

Checkpoints are read with ``weights_only=True`` (NumPy ``.npz`` archives with
``allow_pickle=False``): a file that needs arbitrary pickled objects is
refused, never executed. The spec's name map turns the checkpoint's tensor
names into seqserve's; every mismatch between the file and the spec is
gathered into one message that names the tensors, as the checkpoint calls
them.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.cho import ChoGRUModel
from models.export import ExportableModel
from models.spec import FAMILIES, ModelSpec
from models.stack import SequenceModel

CELL_NAMES = re.compile(r"^rnn\.(weight_ih|weight_hh|bias_ih|bias_hh)$")
"""``nn.LSTMCell``'s parameter names once prefixed (F7): one layer, forward."""

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
"""Keys under which training scripts commonly nest the weights."""


class CheckpointError(ValueError):
    """The checkpoint cannot be read, or does not fit the spec."""


def load_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".npz":
        return load_arrays(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found or "This file can still be loaded" in text:
            what = f"it pickles {found.group(1)}" if found else "it holds pickled Python objects"
            raise CheckpointError(
                f"{path}: not a weights-only checkpoint ({what}); save model.state_dict() instead of the model"
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint (unreadable as torch.save output)") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a torch checkpoint ({str(exc).splitlines()[0]})") from None
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    return {str(k): v for k, v in obj.items()}


def load_arrays(path: Path) -> dict[str, Tensor]:
    """A NumPy ``.npz`` archive of named numeric arrays (family F9's weights)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise CheckpointError(
                f"{path}: holds pickled Python objects; save plain numeric arrays (np.savez(path, W_z=..., ...))"
            ) from None
        raise CheckpointError(f"{path}: not a NumPy .npz archive ({str(exc).splitlines()[0]})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a NumPy .npz archive ({str(exc).splitlines()[0]})") from None
    odd = [name for name, a in arrays.items() if a.dtype.kind not in "fiu"]
    if not arrays or odd:
        raise CheckpointError(f"{path}: expected named numeric arrays, got {'nothing' if not arrays else odd}")
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}


def map_names(spec: ModelSpec, state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """The checkpoint under seqserve's names: ``(state, seqserve name -> checkpoint
    name, problems)``; two tensors mapping onto one name is a problem."""
    rules = spec.names
    renames = dict(rules.renames)
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    problems = []
    for name, tensor in state.items():
        if name in rules.ignore:
            continue
        if name in renames:
            target = renames[name]
        elif rules.backward and name.startswith(rules.backward):
            target = "rnn." + name[len(rules.backward) :] + "_reverse"
        else:
            target = next((to + name[len(src) :] for src, to in rules.prefixes if name.startswith(src)), name)
            if spec.family == "F7":
                target = CELL_NAMES.sub(r"rnn.\1_l0", target)
        if target in mapped:
            problems.append(f"{origin[target]} and {name} both map to {target}")
            continue
        mapped[target], origin[target] = tensor, name
    return mapped, origin, problems


def checkpoint_name(spec: ModelSpec, name: str) -> str:
    """The name a seqserve tensor would have in the checkpoint under the spec's
    rules: the inverse of ``map_names``, for naming what is missing."""
    rules = spec.names
    for source, target in rules.renames:
        if target == name:
            return source
    if rules.backward and name.startswith("rnn.") and name.endswith("_reverse"):
        return rules.backward + name[len("rnn.") : -len("_reverse")]
    if spec.family == "F7":
        name = re.sub(r"^rnn\.(weight_ih|weight_hh|bias_ih|bias_hh)_l0$", r"rnn.\1", name)
    return next((source + name[len(to) :] for source, to in rules.prefixes if name.startswith(to)), name)


def fit_problems(
    model: torch.nn.Module,
    state: Mapping[str, Tensor],
    origin: Mapping[str, str] | None = None,
    spec: ModelSpec | None = None,
) -> list[str]:
    """Every tensor that is missing, unexpected or of the wrong shape, named as
    the checkpoint names it (and as seqserve does, where they differ)."""
    origin = origin or {}

    def label(name: str) -> str:
        source = origin.get(name, name)
        return name if source == name else f"{source} (as {name})"

    expected = model.state_dict()
    problems = []
    for name, tensor in expected.items():
        if name not in state:
            theirs = checkpoint_name(spec, name) if spec is not None else name
            problems.append(
                f"missing {name} {list(tensor.shape)}" + (f" ({theirs} in the checkpoint)" if theirs != name else "")
            )
        elif tuple(state[name].shape) != tuple(tensor.shape):
            problems.append(f"{label(name)} has shape {list(state[name].shape)}, the spec needs {list(tensor.shape)}")
    problems += [f"unexpected {label(name)} {list(state[name].shape)}" for name in state if name not in expected]
    return problems


def empty_model(spec: ModelSpec) -> ExportableModel:
    return ChoGRUModel(spec) if spec.family == "F9" else SequenceModel(spec)


def build_model(spec: ModelSpec, state: Mapping[str, Tensor], source: str = "checkpoint") -> ExportableModel:
    """The spec's model holding the checkpoint's weights, or ``CheckpointError``
    naming every tensor that does not fit."""
    model = empty_model(spec)
    mapped, origin, problems = map_names(spec, state)
    problems += fit_problems(model, mapped, origin, spec)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(f"{source} does not fit the spec: {shown}{_family_hint(spec, state)}")
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in mapped.items()})
    return model.eval()


def _family_hint(spec: ModelSpec, state: Mapping[str, Tensor]) -> str:
    from models.inspect import guess_family

    guess = guess_family(state)
    if guess is None or guess.family == spec.family:
        return ""
    return f" (its tensors look like family {guess.family}, {FAMILIES[guess.family]}: see seqserve inspect)"
