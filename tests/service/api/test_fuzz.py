"""Generated bad input against one running server: property-based bodies for /predict and V2 infer,
raw bytes, invalid JSON and wrong content types. Whatever arrives: never a 5xx, every error in the
contract's shape, and the next good request is served.

The examples per test are bounded for CI (`SEQSERVE_FUZZ_EXAMPLES`, default 120); the figures the
reliability table records are printed at the end of the module (`pytest -s`).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.api.conftest import Server, run_server
from tests.service.conftest import BuiltRepository

EXAMPLES = int(os.environ.get("SEQSERVE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases in every CI run; a found case stays as an explicit test below
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
GOOD = {"inputs": [[[0.1, 0.2, 0.3, 0.4, 0.5]] * 3]}
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the whole module: a defect one case leaves behind shows up in the next."""
    with run_server(test_repository.path, "--max-delay-ms", "1", log_dir=tmp_path_factory.mktemp("fuzz")) as running:
        yield running
        log = running.log()
    print(f"\nfuzz tally: cases {TALLY['cases']}, requests {TALLY['requests']}, 5xx {TALLY['failures']}")
    # NOTE: no client input may reach the internal-error path.
    assert "internal error" not in log and "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def client(fuzz_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.url, timeout=60) as c:
        yield c


def check(response: httpx.Response) -> None:
    """No 5xx; a 4xx in the contract's shape, carrying neither a traceback nor a file path."""
    TALLY["requests"] += 1
    status = response.status_code
    if status >= 500:
        TALLY["failures"] += 1
    assert status < 500, (status, response.text[:2000])
    if status < 400:
        return
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    if response.request.url.path.startswith("/v2"):
        assert set(body) == {"error", "code"}, body
        message = body["error"]
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        message = body["error"]["message"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message and "/work/" not in message and ".py" not in message, message


def still_serving(client: httpx.Client) -> None:
    TALLY["requests"] += 1
    response = client.post("/v1/models/feat/predict", json=GOOD)
    assert response.status_code == 200, response.text


def post(client: httpx.Client, path: str, body: Any) -> None:
    TALLY["cases"] += 1
    # json.dumps writes NaN and Infinity as Python clients do; the server must answer 422.
    content = json.dumps(body, allow_nan=True).encode()
    check(client.post(path, content=content, headers={"content-type": "application/json"}))
    still_serving(client)


# -- strategies -------------------------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e-300, max_value=1e-300),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([1e308, -1e308, 5e-324, 3.5e38, -3.5e38, 1e39, 0, -0.0, 10**400, -(10**400)]),
)
scalars = st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=40,
)
# Feature sequences near the right shape: ragged steps, wrong widths, bad elements.
steps = st.lists(st.one_of(numbers, scalars), min_size=0, max_size=7)
sequences = st.one_of(st.lists(steps, min_size=0, max_size=45), scalars, st.lists(json_values, max_size=3))
predict_bodies = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(sequences, min_size=0, max_size=4)}),
    st.fixed_dictionaries({"inputs": json_values}),
    json_values,
)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)  # unicode, control characters, surrogates out
text_bodies = st.fixed_dictionaries({"inputs": st.lists(st.one_of(texts, scalars), min_size=0, max_size=4)})
datatypes = st.sampled_from(["FP32", "FP64", "INT64", "INT32", "INT8", "BYTES", "BOOL", "fp32", "", "X"])
shapes = st.lists(st.integers(min_value=-3, max_value=2**40), max_size=4)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "lengths", "text", "other", ""]),
        "shape": st.one_of(shapes, json_values),
        "datatype": st.one_of(datatypes, json_values),
        "data": st.one_of(st.lists(numbers, max_size=30), json_values),
    },
    optional={"parameters": json_values},
)
v2_bodies = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.lists(tensors, max_size=3)},
        optional={
            "id": json_values,
            "outputs": st.lists(st.fixed_dictionaries({"name": json_values}), max_size=3),
            "parameters": json_values,
        },
    ),
    json_values,
)
models = st.sampled_from(["feat", "tagger", "regress", "equal", "text"])


# -- properties ---------------------------------------------------------------


@FUZZ
@given(body=predict_bodies, model=models)
def test_predict_bodies_never_5xx(client: httpx.Client, body: Any, model: str) -> None:
    post(client, f"/v1/models/{model}/predict", body)


@FUZZ
@given(body=text_bodies)
def test_text_bodies_never_5xx(client: httpx.Client, body: Any) -> None:
    post(client, "/v1/models/text/predict", body)


@FUZZ
@given(body=v2_bodies, model=models)
def test_v2_infer_bodies_never_5xx(client: httpx.Client, body: Any, model: str) -> None:
    post(client, f"/v2/models/{model}/infer", body)


content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/octet-stream",
            "application/json; charset=latin-1",
            "application/ld+json",
            "",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(str.encode),
        st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n),
        st.integers(min_value=1, max_value=5000).map(lambda n: b'{"inputs":' * n),
    ),
    content_type=content_types,
    path=st.sampled_from(["/predict", "/v1/models/feat/predict", "/v2/models/feat/infer", "/v2/models/text/infer"]),
    # NOTE: a header with control characters is refused by the HTTP parser (h11) with a plain-text 400
    # before the application sees it; header values here are printable ASCII.
    header_length=st.one_of(
        st.none(), st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6)
    ),
)
def test_raw_bytes_and_content_types_never_5xx(
    client: httpx.Client, raw: bytes, content_type: str | None, path: str, header_length: str | None
) -> None:
    TALLY["cases"] += 1
    headers = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if header_length is not None and path.startswith("/v2"):
        headers["inference-header-content-length"] = header_length
    try:
        response = client.post(path, content=raw, headers=headers)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # the client refuses to send such a header; nothing reached the server
    check(response)
    still_serving(client)


# -- explicit cases, kept whatever the generator draws ------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,  # deeper than either JSON parser recurses
        b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"inputs": [[[1e999, 0, 0, 0, 0]]]}',
        b'{"inputs": [[[NaN, 0, 0, 0, 0]]]}',
        b'{"inputs": [[[-Infinity, 0, 0, 0, 0]]]}',
        b'{"inputs": [[[1' + b"0" * 5000 + b", 0, 0, 0, 0]]]}",
        b'{"inputs": [[[' + b"9" * 400 + b", 0, 0, 0, 0]]]}",
        '{"inputs": ["\u0000\u202e\ud7ff\U0010ffff"]}'.encode(),
        b'{"inputs": ["\\ud800"]}',  # a lone surrogate, escaped
        b"\xff\xfe{}",
        b"",
    ],
)
@pytest.mark.parametrize("path", ["/v1/models/feat/predict", "/v1/models/text/predict", "/v2/models/feat/infer"])
def test_hostile_bodies_are_4xx(client: httpx.Client, raw: bytes, path: str) -> None:
    TALLY["cases"] += 1
    check(client.post(path, content=raw, headers={"content-type": "application/json"}))
    still_serving(client)


def test_integers_beyond_any_float_are_422_naming_the_element(client: httpx.Client) -> None:
    """Regression: a JSON integer of 400 digits overflowed float conversion into a 500."""
    huge = int("9" * 400)
    TALLY["cases"] += 2
    response = client.post("/v1/models/feat/predict", json={"inputs": [[[0, 0, 0, 0, 0], [0, 0, huge, 0, 0]]]})
    check(response)
    assert response.status_code == 422 and "inputs[0][1][2]: not a finite" in response.json()["error"]["message"]
    tensor = {"name": "input", "shape": [1, 1, 5], "datatype": "FP32", "data": [0, 0, 0, huge, 0]}
    response = client.post("/v2/models/feat/infer", json={"inputs": [tensor]})
    check(response)
    assert response.status_code == 422 and "inputs[0].data[3]: not a finite" in response.json()["error"], response.text
    still_serving(client)


def test_tiny_and_huge_finite_numbers_are_served_or_refused_cleanly(client: httpx.Client) -> None:
    for value in (5e-324, 1e-300, 1e38, 3.4e38, -3.4e38, 2**63, -(2**63) - 1, 2**64):
        TALLY["cases"] += 1
        response = client.post("/v1/models/feat/predict", json={"inputs": [[[value, 0, 0, 0, 0]]]})
        check(response)
        if response.status_code == 200:
            assert all(math.isfinite(p) for p in response.json()["outputs"][0]["probabilities"])
    still_serving(client)


def test_fuzz_ran(fuzz_server: Server) -> None:
    """Last in the module: the tally is what the table records."""
    assert TALLY["cases"] > 0 and TALLY["failures"] == 0, TALLY
