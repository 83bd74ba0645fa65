"""Exactness through HTTP: answers of concurrent mixed-length requests equal the same sequences
sent one by one, and the references run on each sequence alone."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.api.conftest import Server, batch_counts, softmax
from tests.service.conftest import BuiltRepository

TOLERANCE = 1e-4
FEATURES = {"feat": 5, "tagger": 4, "regress": 3, "equal": 3}
MAX_LENGTH = {"feat": 40, "tagger": 30, "regress": 30, "equal": 20, "text": 32}


def random_inputs(model: str, count: int, rng: np.random.Generator) -> list[Any]:
    if model == "text":
        alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ '-é1")
        return ["".join(rng.choice(alphabet, size=int(rng.integers(1, MAX_LENGTH["text"] + 1)))) for _ in range(count)]
    if model == "equal":
        lengths = rng.choice([2, 5, 9, 20], size=count)
    else:
        lengths = rng.integers(1, MAX_LENGTH[model] + 1, size=count)
    return [rng.normal(size=(int(n), FEATURES[model])).round(5).tolist() for n in lengths]


def as_array(output: dict[str, Any]) -> np.ndarray:
    return np.asarray(output["values"] if "values" in output else output["probabilities"], dtype=np.float64)


def expected(model: str, test_repository: BuiltRepository, seq: Any) -> np.ndarray:
    raw = test_repository.references[model](seq)
    return raw.astype(np.float64) if model == "regress" else softmax(raw)


def predict(client: httpx.Client, model: str, inputs: list[Any]) -> list[dict[str, Any]]:
    response = client.post(f"/v1/models/{model}/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model
    assert len(body["outputs"]) == len(inputs)
    return list(body["outputs"])


@pytest.mark.parametrize("model", ["feat", "text", "tagger", "regress", "equal"])
def test_one_by_one_matches_the_original_module(server: Server, test_repository: BuiltRepository, model: str) -> None:
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for seq in random_inputs(model, 6, rng):
            [output] = predict(client, model, [seq])
            np.testing.assert_allclose(as_array(output), expected(model, test_repository, seq), atol=TOLERANCE, rtol=0)


def test_output_shapes_follow_the_task(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        [classified] = predict(client, "feat", [[[0.1] * 5] * 3])
        assert classified["label"] in {"neg", "neu", "pos"} and len(classified["probabilities"]) == 3
        assert abs(sum(classified["probabilities"]) - 1) < 1e-6
        [tagged] = predict(client, "tagger", [[[0.1] * 4] * 7])
        assert len(tagged["labels"]) == 7 and set(tagged["labels"]) <= {"B", "I", "O", "X"}
        assert np.asarray(tagged["probabilities"]).shape == (7, 4)
        [regressed] = predict(client, "regress", [[[0.1] * 3] * 2])
        assert len(regressed["values"]) == 2
        [named] = predict(client, "text", ["Ada Lovelace"])
        assert named["label"] in {"female", "male"}


def test_default_model_and_pinned_version(server: Server) -> None:
    seq = [[0.5] * 3] * 4
    with httpx.Client(base_url=server.url, timeout=30) as client:
        listing = client.get("/v1/models").json()
        default = listing["default_model"]
        assert default == "equal"  # the first name in sorted order
        answer = client.post("/predict", json={"inputs": [seq]}).json()
        assert answer["model"] == "equal"
        assert client.post("/v1/models/feat/predict", json={"inputs": [[[0.1] * 5]]}).json()["version"] == 2
        pinned = client.post("/v1/models/feat/versions/1/predict", json={"inputs": [[[0.1] * 5]]}).json()
        assert pinned["version"] == 1


async def _concurrently(url: str, model: str, groups: list[list[Any]]) -> list[list[dict[str, Any]]]:
    limits = httpx.Limits(max_connections=len(groups))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(inputs: list[Any]) -> list[dict[str, Any]]:
            response = await client.post(f"/v1/models/{model}/predict", json={"inputs": inputs})
            assert response.status_code == 200, response.text
            return list(response.json()["outputs"])

        return await asyncio.gather(*(one(group) for group in groups))


@pytest.mark.parametrize("model", ["feat", "text", "equal", "tagger"])
def test_concurrent_mixed_lengths_equal_one_by_one(
    server: Server, test_repository: BuiltRepository, model: str
) -> None:
    rng = np.random.default_rng(7)
    sequences = random_inputs(model, 48, rng)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        alone = [predict(client, model, [seq])[0] for seq in sequences]
    batches_before, singles_before = batch_counts(server, model)

    # Requests of 1 to 3 sequences, all in flight at once.
    groups: list[list[Any]] = []
    position = 0
    while position < len(sequences):
        size = int(rng.integers(1, 4))
        groups.append(sequences[position : position + size])
        position += size
    answers = asyncio.run(_concurrently(server.url, model, groups))
    together = [output for group in answers for output in group]

    assert len(together) == len(sequences)
    for seq, one, batched in zip(sequences, alone, together, strict=True):
        np.testing.assert_allclose(as_array(batched), as_array(one), atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(as_array(batched), expected(model, test_repository, seq), atol=TOLERANCE, rtol=0)
        if "label" in one:
            assert batched["label"] == one["label"] or np.isclose(
                max(one["probabilities"]), sorted(one["probabilities"])[-2]
            )
        if "labels" in one:
            assert len(batched["labels"]) == len(seq)

    batches_after, singles_after = batch_counts(server, model)
    batches, singles = batches_after - batches_before, singles_after - singles_before
    assert batches > 0
    assert batches - singles > 0, "no batch of more than one sequence formed"
    # Each request alone would need a batch of its own: fewer batches means requests shared them.
    assert batches < len(groups), f"{len(groups)} requests ran in {batches} batches"
