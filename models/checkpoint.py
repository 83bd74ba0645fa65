"""Load a user's checkpoint safely and fit it onto a ``SequenceModel``.

Checkpoints are read with ``weights_only=True``: a file that needs arbitrary
pickled objects is refused, never executed. Every mismatch between the file
and the spec is gathered into one message that names the tensors.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from models.spec import ModelSpec
from models.stack import SequenceModel

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
"""Keys under which training scripts commonly nest the weights."""


class CheckpointError(ValueError):
    """The checkpoint cannot be read, or does not fit the spec."""


def load_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
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
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items()}


def fit_problems(model: torch.nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Every tensor that is missing, unexpected or of the wrong shape."""
    expected = model.state_dict()
    problems = []
    for name, tensor in expected.items():
        if name not in state:
            problems.append(f"missing {name} {list(tensor.shape)}")
        elif tuple(state[name].shape) != tuple(tensor.shape):
            problems.append(f"{name} has shape {list(state[name].shape)}, the spec needs {list(tensor.shape)}")
    problems += [f"unexpected {name} {list(state[name].shape)}" for name in state if name not in expected]
    return problems


def build_model(spec: ModelSpec, state: Mapping[str, Tensor], source: str = "checkpoint") -> SequenceModel:
    model = SequenceModel(spec)
    problems = fit_problems(model, state)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(f"{source} does not fit the spec: {shown}")
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()
