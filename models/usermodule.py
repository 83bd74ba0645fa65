"""The user's own model class as the parity reference.

Their source file is imported from its path, the class built with the spec's
keyword arguments and given the checkpoint strictly, exactly as saved (their
names, their dtypes). It then runs in eval mode on one unpadded sequence at a
time, so its answer is the one the user has always seen, whatever traps
(``out[:, -1, :]``, ``torch.flip``, ``AdaptiveAvgPool1d``) it holds for padded
batches.

NOTE: this runs the user's code, which they named on the command line or in
their spec; the checkpoint itself is still read without unpickling anything.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.parity import Reference
from models.spec import ModelSpec, UserModule


class UserModuleError(ValueError):
    """The user's module cannot be loaded, built, given the checkpoint or run."""


def load_class(source: Path, class_name: str) -> type:
    if not source.is_file():
        raise UserModuleError(f"{source}: no such module source file")
    module_name = f"seqserve_user_{abs(hash(source.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, source)
    if loader_spec is None or loader_spec.loader is None:
        raise UserModuleError(f"{source}: not a Python source file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # their file, any error: report it in one line
        del sys.modules[module_name]
        raise UserModuleError(f"{source}: importing it failed: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and v.__module__ == module_name)
        raise UserModuleError(f"{source}: no class {class_name!r} (classes defined there: {found})")
    return cls


def strict_problems(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]]) -> list[str]:
    problems = [f"missing {k} {list(s)}" for k, s in expected.items() if k not in given]
    problems += [
        f"{k} has shape {list(given[k])}, the module needs {list(s)}"
        for k, s in expected.items()
        if k in given and tuple(given[k]) != tuple(s)
    ]
    problems += [f"unexpected {k} {list(s)}" for k, s in given.items() if k not in expected]
    return problems


def instantiate(user: UserModule, base: Path, state: Mapping[str, Tensor]) -> Any:
    """The user's object, holding the checkpoint, in eval mode."""
    source = Path(user.source)
    if not source.is_absolute():
        source = base / source
    cls = load_class(source, user.class_name)
    try:
        obj = cls(**user.kwargs)
    except Exception as exc:
        raise UserModuleError(
            f"{user.describe()}({_kwargs(user.kwargs)}) failed: {type(exc).__name__}: {exc}"
        ) from None
    given = {k: tuple(v.shape) for k, v in state.items()}
    if isinstance(obj, torch.nn.Module):
        expected = {k: tuple(v.shape) for k, v in obj.state_dict().items()}
        problems = strict_problems(expected, given)
        if problems:
            raise UserModuleError(f"{user.describe()} does not take the checkpoint: {'; '.join(problems[:6])}")
        obj.load_state_dict(dict(state), strict=True)
        return obj.eval()
    # A plain Python (NumPy) object: its array attributes are its state.
    expected = {k: tuple(v.shape) for k, v in vars(obj).items() if isinstance(v, np.ndarray)}
    problems = strict_problems(expected, given)
    if problems:
        raise UserModuleError(f"{user.describe()} does not take the arrays: {'; '.join(problems[:6])}")
    for name, tensor in state.items():
        setattr(obj, name, tensor.numpy().copy())
    return obj


def user_reference(
    user: UserModule, base: Path, state: Mapping[str, Tensor], spec: ModelSpec, strict_shape: bool = True
) -> Reference:
    """``(one unpadded sequence [T, ...]) -> output`` shaped as the graph's row:
    ``[O]``, or ``[T, O]`` for a tagger; without ``strict_shape``, the module's
    answer less its batch axis."""
    obj = instantiate(user, base, state)
    is_torch = isinstance(obj, torch.nn.Module)
    call = obj if callable(obj) else getattr(obj, "forward", None)
    if call is None:
        raise UserModuleError(f"{user.describe()}: neither callable nor has a forward method")

    def run(seq: np.ndarray) -> np.ndarray:
        x: Any = torch.from_numpy(seq) if is_torch else seq
        args = call_args(user.inputs, x, len(seq), is_torch)
        try:
            with torch.no_grad():
                out = call(*args)
        except Exception as exc:
            raise UserModuleError(
                f"{user.describe()} failed on a sequence of length {len(seq)}: {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(out, (tuple, list)):
            out = out[0]
        array = out.detach().numpy() if isinstance(out, Tensor) else np.asarray(out)
        if user.inputs.startswith("time_major") and array.ndim >= 3 and array.shape[1] == 1:
            array = array.swapaxes(0, 1)  # a per-step answer [T, 1, O] of the one sequence
        if not strict_shape:
            return array.astype(np.float64)[0] if user.inputs != "sequence" else array.astype(np.float64)
        return _as_row(array.astype(np.float64), user, spec, len(seq))

    return run


def call_args(inputs: str, x: Any, steps: int, is_torch: bool = True) -> tuple[Any, ...]:
    """How the module is called on one sequence ``x [T, ...]`` (``UserModule.inputs``)."""
    if inputs == "sequence":
        return (x,)
    x = x[:, None] if inputs.startswith("time_major") else x[None]
    length = torch.tensor([steps]) if is_torch else np.array([steps])
    return (x, length) if inputs.endswith("and_lengths") else (x,)


def _as_row(out: np.ndarray, user: UserModule, spec: ModelSpec, steps: int) -> np.ndarray:
    want = (steps, spec.num_outputs) if spec.readout == "all" else (spec.num_outputs,)
    got = out.shape
    if user.inputs != "sequence":
        if not got or got[0] != 1:
            raise UserModuleError(
                f"{user.describe()} returned shape {list(got)} for a batch of one; "
                f"expected a leading batch axis of 1 (reference.inputs {user.inputs!r}: "
                f"{INPUTS_HELP.get(user.inputs, '')}; export without a spec settles it by probing)"
            )
        out = out[0]
    # Allow a size-1 axis too many or too few (a forecaster's [1] vs [], a tagger's [T] for one output).
    if (
        out.shape != want
        and out.size == int(np.prod(want))
        and [d for d in out.shape if d != 1] == [d for d in want if d != 1]
    ):
        out = out.reshape(want)
    if out.shape != want:
        raise UserModuleError(
            f"{user.describe()} returned shape {list(got)} for one sequence of length {steps}; "
            f"the spec's graph answers {list(want)} per sequence"
        )
    return out


INPUTS_HELP = {
    "batch": "module(x[None]) with x [T, F]",
    "batch_and_lengths": "module(x[None], lengths)",
    "sequence": "module(x)",
    "time_major": "module(x[:, None]), time first",
    "time_major_and_lengths": "module(x[:, None], lengths), time first",
}


def _kwargs(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
