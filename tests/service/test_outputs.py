from __future__ import annotations

import numpy as np

from service.outputs import OutputFormatter, softmax, v2_binary
from tests.service.specs import make_spec


def test_softmax_is_stable_and_normalised() -> None:
    probabilities = softmax(np.array([[1000.0, 1001.0], [-1000.0, -1000.0]], dtype=np.float32))
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0)
    np.testing.assert_allclose(probabilities[1], [0.5, 0.5])


def test_classification_answers_label_and_probabilities() -> None:
    formatter = OutputFormatter(make_spec())
    [first, second] = formatter.predict([np.array([2.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32)])
    assert first["label"] == "x" and second["label"] == "y"
    np.testing.assert_allclose(first["probabilities"], softmax(np.array([2.0, 0.0])))


def test_tagging_answers_one_label_per_step() -> None:
    formatter = OutputFormatter(make_spec(task="tagging"))
    [answer] = formatter.predict([np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]], np.float32)])
    assert answer["labels"] == ["x", "y", "x"]
    assert answer["probabilities"].shape == (3, 2)


def test_regression_answers_values() -> None:
    formatter = OutputFormatter(make_spec(task="regression"))
    [vector, scalar] = formatter.predict([np.array([1.5], np.float32), np.array(2.5, np.float32)])
    assert vector["values"].tolist() == [1.5] and scalar["values"].tolist() == [2.5]


def test_v2_classification_tensors() -> None:
    formatter = OutputFormatter(make_spec())
    assert formatter.v2_output_names() == ("probabilities", "label", "logits")
    tensors = formatter.v2(
        [np.array([2.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32)], ("label", "probabilities")
    )
    assert [t["name"] for t in tensors] == ["label", "probabilities"]
    assert tensors[0] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["x", "y"]}
    assert tensors[1]["shape"] == [2, 2] and tensors[1]["datatype"] == "FP32"


def test_v2_tagging_pads_to_the_longest_sequence() -> None:
    formatter = OutputFormatter(make_spec(task="tagging"))
    short = np.array([[1.0, 0.0]], np.float32)
    long = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    probabilities, labels, logits = formatter.v2([short, long], None)
    assert probabilities["shape"] == [2, 3, 2] and logits["shape"] == [2, 3, 2]
    assert labels["data"] == ["x", "", "", "y", "x", "y"]
    assert np.asarray(probabilities["data"]).reshape(2, 3, 2)[0, 1:].sum() == 0


def test_v2_regression_tensor() -> None:
    formatter = OutputFormatter(make_spec(task="regression"))
    [values] = formatter.v2([np.array([1.0], np.float32), np.array([2.0], np.float32)], None)
    assert values["name"] == "values" and values["shape"] == [2, 1]


def test_v2_binary_moves_only_the_flagged_tensors_out_of_the_json() -> None:
    formatter = OutputFormatter(make_spec())
    tensors = formatter.v2([np.array([2.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32)], None)
    outputs, chunks = v2_binary(tensors, (True, True, False))
    probabilities, label, logits = outputs
    assert probabilities == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [2, 2],
        "parameters": {"binary_data_size": 16},
    }
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 10}}
    assert logits is tensors[2] and "data" in logits, "a tensor not asked for in binary stays as it was"
    assert chunks[0] == np.asarray(tensors[0]["data"], dtype="<f4").tobytes()
    assert chunks[1] == b"\x01\x00\x00\x00x\x01\x00\x00\x00y", "BYTES: 4-byte little-endian length, then the bytes"


def test_v2_binary_bytes_are_utf8_and_padding_is_an_empty_element() -> None:
    tensor = {"name": "label", "datatype": "BYTES", "shape": [3], "data": ["é", "", "ab"]}
    [_], [chunk] = v2_binary([tensor], (True,))
    assert chunk == b"\x02\x00\x00\x00\xc3\xa9" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00ab"


def test_v2_binary_fp32_is_little_endian_whatever_the_array() -> None:
    big_endian = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=">f4")
    tensor = {"name": "values", "datatype": "FP32", "shape": [2, 2], "data": big_endian.T.ravel()}
    [header], [chunk] = v2_binary([tensor], (True,))
    assert header["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(chunk, dtype="<f4").tolist() == [1.5, 0.25, -2.0, 3.0]
