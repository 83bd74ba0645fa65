"""What can be wrong with a repository entry beyond its schema: found before it answers a request.

Two kinds of check, each giving one line per problem:

- `metadata_problems(spec)`: model.json alone. A vocabulary with duplicate entries, with entries a
  character tokenizer never produces (several characters; upper case under lowercasing, and case pairs),
  duplicate labels.
- `graph_problems(spec, runtime)`: a graph opened by a runtime, probed with small batches. The output's
  shape against the task and labels; the graph's embedding against the vocabulary (by feeding single ids:
  the first id the graph refuses is its embedding's size); softmax asked for over an output that is
  already a probability distribution; `padding: exact` claimed by a graph whose padded batch answers
  differently from each sequence alone.

The loader runs both (`service.repository.read_entry` the first, the registry the second, on every
format it opens), so a broken entry is reported like any other and the others serve; `seqserve
validate` runs both on every entry offline. `seqserve add` uses the probes to fill in an entry.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from service.model_json import ModelJson
from service.runtime.base import Runtime, input_dtype, zero_batch

log = logging.getLogger(__name__)

EXACT_TOLERANCE = 1e-4
"""Padding-exact: a padded batch answers each sequence within this of the sequence alone (absolute, on a
scale of 1; relative beyond)."""
DISTRIBUTION_TOLERANCE = 1e-4
"""An output row is a probability distribution: within [0, 1] and summing to 1 within this."""
MOST_IDS = 1 << 24
"""Embedding probes stop here: a graph that takes every id up to it has no embedding they can size."""


# -- model.json alone --------------------------------------------------------------


def metadata_problems(spec: ModelJson) -> list[str]:
    """What model.json says that would serve wrong answers without a word; one line per problem."""
    problems: list[str] = []
    tokenizer = spec.input.tokenizer
    if tokenizer is not None:
        where = "input.tokenizer.vocabulary"
        vocabulary = tokenizer.vocabulary
        ids: dict[str, list[int]] = {}
        for i, entry in enumerate(vocabulary):
            if entry:  # NOTE: "" marks an id no text maps to (an embedding row past the user's vocabulary)
                ids.setdefault(entry, []).append(i)
        for entry, at in ids.items():
            if len(at) > 1:
                problems.append(f"{where}: {entry!r} appears {len(at)} times (ids {', '.join(map(str, at))})")
        if tokenizer.type == "char":
            specials = {tokenizer.padding_id, tokenizer.unknown_id}
            for i, entry in enumerate(vocabulary):
                if len(entry) > 1 and i not in specials:
                    problems.append(
                        f"{where}[{i}]: {entry!r} is {len(entry)} characters; a 'char' tokenizer maps single "
                        "characters (only the padding and unknown entries may be longer)"
                    )
            if tokenizer.lowercase:
                problems += _case_problems(vocabulary, specials, where)
    if spec.labels is not None:
        repeated = [label for label, count in Counter(spec.labels).items() if count > 1]
        problems += [f"labels: {label!r} appears more than once" for label in repeated]
    return problems


def _case_problems(vocabulary: tuple[str, ...], specials: set[int], where: str) -> list[str]:
    """Entries lowercasing never lets text reach: upper case ones, with or without their lower case pair."""
    problems = []
    ids: dict[str, int] = {}
    for i, entry in enumerate(vocabulary):
        ids.setdefault(entry, i)
    for i, entry in enumerate(vocabulary):
        if len(entry) != 1 or i in specials or entry.lower() == entry:
            continue
        lower = ids.get(entry.lower())
        pair = f"{entry.lower()!r} (id {lower}) is there too; " if lower is not None else ""
        problems.append(
            f"{where}[{i}]: {entry!r} is upper case and lowercase is on: {pair}text never maps to id {i} "
            "(set lowercase to false, or drop the upper case entries)"
        )
    return problems


# -- a graph, probed -----------------------------------------------------------------


def graph_problems(spec: ModelJson, runtime: Runtime) -> list[str]:
    """What probing the opened graph shows to disagree with model.json; one line per problem."""
    problem = output_shape_problem(spec, runtime)
    if problem is not None:
        return [problem]  # NOTE: the other probes read the output; with the wrong shape they would mislead
    problems: list[str] = []
    probed = spec  # what the probes below feed: ids the graph takes
    size = vocabulary_size(spec)
    if size is not None:
        if runtime.device != "cpu":
            # NOTE: an out-of-range id on a GPU is no clean error (torch's device-side assert ends the process's
            # CUDA context); `seqserve validate` checks on the CPU.
            log.info("%s/%s: embedding size not probed on %s", spec.name, spec.version, runtime.device)
        else:
            rows = embedding_rows(spec, runtime)
            if rows is not None and rows != size:
                what = "input.vocabulary_size is" if spec.input.kind == "tokens" else "the vocabulary has"
                problems.append(
                    f"{what} {size} but the graph's embedding has {rows} rows (ids 0..{rows - 1}): "
                    "ids and rows would not line up"
                )
                probed = _within(spec, rows)
    if spec.task != "regression" and spec.graph.output_activation == "softmax":
        distribution = _probe(spec, "softmax", lambda: output_is_distribution(probed, runtime))
        if distribution:
            problems.append(
                f"graph.output_activation is 'softmax' but graph output '{spec.graph.output}' is already a "
                "probability distribution (each row in [0, 1], summing to 1): softmax would be applied twice; "
                "set it to 'none'"
            )
    if spec.padding == "exact":
        worst = _probe(spec, "padding", lambda: padding_error(probed, runtime))
        if worst is not None and worst[0] > _tolerance(worst[1]):
            problems.append(
                f"padding is 'exact' but a padded batch of mixed lengths answers up to {worst[0]:.2g} away "
                "from each sequence run alone: set padding to 'equal-length'"
            )
    return problems


T = TypeVar("T")


def _probe(spec: ModelJson, what: str, probe: Callable[[], T]) -> T | None:
    """The probe's finding, or None when the graph raised on it: a graph may refuse inputs outside the domain
    it was trained on (random ones), and fail the requests that send them; that alone is no reason to refuse
    the entry. Logged."""
    try:
        return probe()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning(
            "%s/%s: %s not checked: the graph failed on a probe batch (%s)", spec.name, spec.version, what, first
        )
        return None


def _within(spec: ModelJson, rows: int) -> ModelJson:
    """`spec` with only the ids below `rows` in its vocabulary, for probing a graph whose embedding is smaller."""
    tokenizer = spec.input.tokenizer
    changed: dict[str, object]
    if tokenizer is not None:
        changed = {"tokenizer": tokenizer.model_copy(update={"vocabulary": tokenizer.vocabulary[:rows]})}
    else:
        changed = {"vocabulary_size": min(rows, spec.input.vocabulary_size or rows)}
    return spec.model_copy(update={"input": spec.input.model_copy(update=changed)})


def output_shape_problem(spec: ModelJson, runtime: Runtime) -> str | None:
    """The graph's output shape against model.json's task, labels and output names."""
    time = runtime.fixed_length or min(3, spec.input.max_length)
    rows = runtime.fixed_batch or 2
    batch, lengths = zero_batch(spec, rows, time)
    out = np.asarray(runtime.predict(batch, lengths if spec.uses_lengths else None))
    where = f"graph output '{spec.graph.output}' has shape {list(out.shape)} for a batch of {rows} x {time}"
    if out.shape[0] != rows:
        return f"{where}: expected {rows} rows"
    if spec.task == "classification":
        assert spec.labels is not None
        if out.shape != (rows, len(spec.labels)):
            return f"{where}: expected [{rows}, {len(spec.labels)}] ({len(spec.labels)} labels)"
    elif spec.task == "tagging":
        assert spec.labels is not None
        if out.shape != (rows, time, len(spec.labels)):
            return f"{where}: expected [{rows}, {time}, {len(spec.labels)}]"
    else:
        per_step = out.ndim == 3 and out.shape[1] == time  # values per step [B, T, O]
        outputs = 1 if out.ndim == 1 else int(out.shape[-1] if per_step else np.prod(out.shape[1:]))
        if (out.ndim > 2 and not per_step) or (spec.output_names is not None and outputs != len(spec.output_names)):
            return f"{where}: expected [{rows}, {len(spec.output_names or ())}]"
    return None


def vocabulary_size(spec: ModelJson) -> int | None:
    """How many token ids model.json says the graph takes; None for feature models."""
    if spec.input.tokenizer is not None:
        return len(spec.input.tokenizer.vocabulary)
    return spec.input.vocabulary_size if spec.input.kind == "tokens" else None


def embedding_rows(spec: ModelJson, runtime: Runtime, *, guess: int | None = None) -> int | None:
    """The first token id the graph refuses (its embedding's rows), found with batches of one id; None when it
    takes every id up to `MOST_IDS` (no embedding that checks its ids). `guess`: where to start (the
    vocabulary size model.json states): two runs when it is right."""
    rows, time = runtime.fixed_batch or 1, runtime.fixed_length or 1

    def takes(token: int) -> bool:
        batch, lengths = zero_batch(spec, rows, time)
        batch[0, 0] = token
        try:
            runtime.predict(batch, lengths if spec.uses_lengths else None)
        except Exception:
            return False
        return True

    start = guess or vocabulary_size(spec) or 2
    if takes(start - 1):
        low, high = start - 1, start  # low is taken; find the first refused
        while takes(high):
            low, high = high, high * 2
            if high > MOST_IDS:
                return None
    else:
        low, high = 0, start - 1
        if not takes(low):
            return None  # not even id 0: something else is wrong, the output checks say what
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if takes(middle) else (low, middle)
    return high


def sample_batch(spec: ModelJson, lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A padded batch of random valid sequences of `lengths`: features from a normal distribution, token ids
    from the vocabulary (never the padding id); padded as the batcher pads."""
    rng = np.random.default_rng(seed)
    time = max(lengths)
    batch, _ = zero_batch(spec, len(lengths), time)
    for row, length in enumerate(lengths):
        if spec.input.kind == "features":
            batch[row, :length] = rng.standard_normal((length, batch.shape[2]))
        else:
            batch[row, :length] = rng.choice(_token_choices(spec), length)
    return batch, np.asarray(lengths, dtype=np.int64)


def _token_choices(spec: ModelJson) -> np.ndarray:
    tokenizer = spec.input.tokenizer
    if tokenizer is not None:
        specials = {tokenizer.padding_id, tokenizer.unknown_id}
        ids = [i for i, entry in enumerate(tokenizer.vocabulary) if i not in specials]
    else:
        ids = [i for i in range(min(vocabulary_size(spec) or 2, 1 << 16)) if i != spec.input.padding_id]
    return np.asarray(ids or [int(spec.input.pad_value)], dtype=input_dtype(spec))


def output_is_distribution(spec: ModelJson, runtime: Runtime) -> bool:
    """Whether every row the graph answers for a few random unpadded sequences is a probability distribution."""
    rows = runtime.fixed_batch or 3
    time = runtime.fixed_length or min(5, spec.input.max_length)
    batch, lengths = sample_batch(spec, [time] * rows, seed=1)
    out = np.asarray(runtime.predict(batch, lengths if spec.uses_lengths else None), dtype=np.float64)
    if out.ndim < 2 or out.shape[-1] < 2:
        return False
    sums = out.sum(axis=-1)
    return bool(
        (out >= -DISTRIBUTION_TOLERANCE).all()
        and (out <= 1 + DISTRIBUTION_TOLERANCE).all()
        and (np.abs(sums - 1) <= DISTRIBUTION_TOLERANCE).all()
    )


PROBE_LENGTHS = (7, 2, 5, 1, 4)
"""Mixed lengths of the padding probe: the longest first and last in turn, a length of one."""


def padding_error(spec: ModelJson, runtime: Runtime) -> tuple[float, float] | None:
    """How far a padded batch of mixed lengths answers from each sequence run alone: the worst absolute
    difference and the largest magnitude of the answers alone. None when the graph fixes its batch or time
    axis (it is never fed a padded batch of mixed lengths)."""
    if runtime.fixed_batch is not None or runtime.fixed_length is not None:
        return None
    lengths = [min(length, spec.input.max_length) for length in PROBE_LENGTHS]
    worst, scale = 0.0, 0.0
    for order in (lengths, lengths[::-1]):
        batch, lengths_array = sample_batch(spec, order, seed=2)
        padded = np.asarray(runtime.predict(batch, lengths_array if spec.uses_lengths else None), dtype=np.float64)
        for row, length in enumerate(order):
            one = batch[row : row + 1, :length]
            alone = np.asarray(
                runtime.predict(np.ascontiguousarray(one), lengths_array[row : row + 1] if spec.uses_lengths else None),
                dtype=np.float64,
            )[0]
            answer = padded[row, :length] if padded.ndim >= 3 else padded[row]
            if answer.shape != alone.shape:
                return float("inf"), 1.0
            worst = max(worst, float(np.abs(answer - alone).max(initial=0.0)))
            scale = max(scale, float(np.abs(alone).max(initial=0.0)))
    return worst, scale


def _tolerance(scale: float) -> float:
    return EXACT_TOLERANCE * max(1.0, scale)
