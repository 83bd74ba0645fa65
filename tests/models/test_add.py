"""`seqserve add`: graphs users exported themselves become entries that answer like their originals, and
`seqserve validate` (and the server's loader) catch what a hand-edited model.json gets wrong about a graph."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from seqserve.cli import main as seqserve
from tests.models.elsewhere import Brought, keras_like_tagger, packed_onnx, plain_onnx, scripted_packed
from tests.service.api.conftest import run_server, sample_value, softmax

TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
FLAGS = {
    "classifier": ["--labels", "a,b,c"],
    "gru": ["--task", "classification", "--labels", "neg,pos"],
    "packed": ["--labels", "O,B,I,E"],
    "tagger": ["--labels", ",".join(TAGS)],
}


@dataclass(frozen=True)
class AddedRepository:
    path: Path
    graphs: dict[str, Brought]
    printed: dict[str, str]


def run(*argv: str) -> tuple[int, str, str]:
    """`seqserve ARGV` in process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = seqserve(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def added(tmp_path_factory: pytest.TempPathFactory) -> AddedRepository:
    folder = tmp_path_factory.mktemp("graphs")
    repository = tmp_path_factory.mktemp("repository")
    graphs = {
        "classifier": plain_onnx(folder),
        "gru": scripted_packed(folder),
        "packed": packed_onnx(folder),
        "tagger": keras_like_tagger(folder),
    }
    printed = {}
    for name, brought in graphs.items():
        status, out, err = run("add", str(brought.path), "--repository", str(repository), "--name", name, *FLAGS[name])
        assert status == 0, err
        printed[name] = out
    return AddedRepository(repository, graphs, printed)


def model_json(repository: Path, name: str, version: int = 1) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((repository / name / str(version) / "model.json").read_text())
    return document


def test_add_reads_each_graph_and_probes_what_its_file_does_not_say(added: AddedRepository) -> None:
    classifier = model_json(added.path, "classifier")
    assert classifier["input"] == classifier["input"] | {"kind": "features", "features": 4}
    assert classifier["graph"] == {
        "input": "input",
        "lengths": None,
        "output": "logits",
        "input_dtype": "float32",
        "output_activation": "softmax",
    }
    assert classifier["padding"] == "equal-length"  # out[:, -1, :] reads the padding
    # torch's exporter left the weights in classifier.onnx.data: the entry holds one self-contained file
    assert sorted(p.name for p in (added.path / "classifier" / "1").iterdir()) == ["model.json", "model.onnx"]
    assert "answers up to" in added.printed["classifier"] and "padding equal-length" in added.printed["classifier"]

    gru = model_json(added.path, "gru")
    assert gru["formats"]["torchscript"] == "model.pt" and gru["formats"]["onnx"] is None
    assert gru["graph"]["input"] == "x" and gru["graph"]["lengths"] == "lengths"
    assert gru["input"]["features"] == 3  # read from the GRU's weights
    assert gru["padding"] == "exact" and gru["task"] == "classification"
    packed = model_json(added.path, "packed")
    assert packed["graph"]["lengths"] == "lengths" and packed["padding"] == "exact" and packed["task"] == "tagging"
    assert packed["graph"]["output_activation"] == "softmax"

    tagger = model_json(added.path, "tagger")
    assert tagger["task"] == "tagging" and tagger["labels"] == list(TAGS)
    assert tagger["input"] == tagger["input"] | {"kind": "tokens", "vocabulary_size": 50, "padding_id": 0}
    assert tagger["graph"] == {
        "input": "keras_tensor_7",
        "lengths": None,
        "output": "output_0",
        "input_dtype": "int32",
        "output_activation": "none",  # it ends in a softmax already
    }
    assert tagger["padding"] == "exact"  # the mask over id 0 is the graph's own lengths
    for line in ("vocabulary_size 50, probed", "already a probability distribution", "padding: exact"):
        assert line in added.printed["tagger"]
    assert tagger["provenance"]["exporter"] == "seqserve add"


def test_add_asks_for_what_no_probe_can_tell_and_writes_nothing_without_it(
    added: AddedRepository, tmp_path: Path
) -> None:
    tagger, classifier = added.graphs["tagger"].path, added.graphs["classifier"].path
    cases = [
        ([str(tagger)], "the graph answers 5 classes per step: give --labels with 5 names"),
        ([str(tagger), "--labels", "a,b"], "--labels: 2 names, the graph answers 5 classes"),
        ([str(tagger), "--task", "classification", "--labels", "a,b,c,d,e"], "the graph answers per step"),
        ([str(classifier)], "give --task classification --labels (3 names), or --task regression"),
        ([str(tagger), "--labels", ",".join(TAGS), "--vocabulary-size", "40"], "the graph's embedding has 50 rows"),
    ]
    for argv, message in cases:
        status, _, err = run("add", *argv, "--repository", str(tmp_path / "repository"), "--name", "m")
        assert status == 1 and message in err, err
        assert not (tmp_path / "repository" / "m").exists()
    # --dry-run: every probe and check, the model.json it would write, nothing written
    status, out, _ = run(
        "add",
        str(tagger),
        "--repository",
        str(tmp_path / "repository"),
        "--name",
        "m",
        "--labels",
        ",".join(TAGS),
        "--dry-run",
    )
    assert status == 0 and "checked, not written (--dry-run):" in out and '"vocabulary_size": 50' in out
    assert not (tmp_path / "repository" / "m").exists()


def test_added_graphs_serve_like_their_originals_alone(added: AddedRepository, tmp_path: Path) -> None:
    # a copy whose model.json asks for softmax over the tagger's distribution: refused at load, the others serve
    root = tmp_path / "repository"
    shutil.copytree(added.path, root, ignore=shutil.ignore_patterns(".*"))
    twice = root / "twice" / "1"
    shutil.copytree(root / "tagger" / "1", twice)
    document = model_json(root, "tagger") | {"name": "twice"}
    document["graph"]["output_activation"] = "softmax"
    (twice / "model.json").write_text(json.dumps(document))

    rng = np.random.default_rng(0)
    lengths = list(range(3, 15))
    features = {
        name: [rng.standard_normal((n, width)).tolist() for n in lengths]
        for name, width in (("classifier", 4), ("gru", 3), ("packed", 3))
    }
    ids = [rng.integers(1, 50, n).tolist() for n in lengths]
    with run_server(root, "--max-delay-ms", "20", "--no-strict-readiness", log_dir=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for name in ("classifier", "gru", "packed"):
                answer = client.post(f"/v1/models/{name}/predict", json={"inputs": features[name]})
                assert answer.status_code == 200, answer.text
                for seq, output in zip(features[name], answer.json()["outputs"], strict=True):
                    expected = softmax(added.graphs[name].reference(seq))
                    assert np.abs(np.asarray(output["probabilities"]) - expected).max() <= 1e-4

            answer = client.post("/v1/models/tagger/predict", json={"inputs": ids})
            assert answer.status_code == 200, answer.text
            for seq, output in zip(ids, answer.json()["outputs"], strict=True):
                expected = added.graphs["tagger"].reference(seq)  # per-step softmax, as the graph answers
                assert np.abs(np.asarray(output["probabilities"]) - expected).max() <= 1e-4
                assert output["labels"] == [TAGS[k] for k in expected.argmax(axis=-1)]

            # V2: INT32 and INT64 [B, T] token ids, padded, with lengths
            padded = np.zeros((3, 7), dtype=np.int64)
            for row, seq in enumerate(ids[:3]):
                padded[row, : len(seq[:7])] = seq[:7]
            for datatype in ("INT32", "INT64"):
                body = {
                    "inputs": [
                        {"name": "input", "datatype": datatype, "shape": [3, 7], "data": padded.ravel().tolist()},
                        {"name": "lengths", "datatype": "INT64", "shape": [3], "data": [3, 4, 5]},
                    ],
                    "outputs": [{"name": "probabilities"}],
                }
                answer = client.post("/v2/models/tagger/infer", json=body)
                assert answer.status_code == 200, answer.text
                got = np.asarray(answer.json()["outputs"][0]["data"]).reshape(3, 5, len(TAGS))
                for row, length in enumerate((3, 4, 5)):
                    expected = added.graphs["tagger"].reference(padded[row, :length].tolist())
                    assert np.abs(got[row, :length] - expected).max() <= 1e-4

            outside = client.post("/v1/models/tagger/predict", json={"inputs": [[1, 2], [3, 50]]})
            assert outside.status_code == 422
            assert (
                outside.json()["error"]["message"] == "inputs[1][1]: token id 50 is outside 0..49 (vocabulary_size 50)"
            )
            text = client.post("/v1/models/tagger/predict", json={"inputs": ["abc"]})
            assert text.status_code == 422 and "expected an array of token ids, got string" in text.text

            metadata = client.get("/v1/models/tagger").json()
            assert metadata["input"]["kind"] == "tokens" and metadata["input"]["vocabulary_size"] == 50
            v2 = client.get("/v2/models/tagger").json()
            assert v2["inputs"][0] == {"name": "input", "datatype": "INT32", "shape": [-1, -1]}

            versions = {m["name"]: m["versions"][0] for m in client.get("/v1/models").json()["models"]}
            assert versions["twice"]["state"] == "failed"
            assert "already a probability distribution" in versions["twice"]["error"]
            assert {versions[name]["state"] for name in ("classifier", "gru", "packed", "tagger")} == {"ready"}

        # padding-exact graphs were batched with mixed lengths; the equal-length one never padded
        metrics = server.metrics()
        for name in ("gru", "packed", "tagger"):
            assert sample_value(metrics, "seqserve_padding_efficiency_bucket", {"model": name, "le": "0.99"}) > 0
        assert sample_value(metrics, "seqserve_padding_efficiency_bucket", {"model": "classifier", "le": "0.99"}) == 0


def edit(added: AddedRepository, root: Path, name: str, **changes: Any) -> None:
    """A copy of entry `name` under `root`, its model.json changed (sections merged)."""
    target = root / name / "1"
    shutil.copytree(added.path / name / "1", target)
    document = model_json(added.path, name)
    for key, value in changes.items():
        document[key] = document[key] | value if isinstance(value, dict) else value
    (target / "model.json").write_text(json.dumps(document))


def test_validate_names_each_problem_a_graph_shows_on_its_own_line(added: AddedRepository, tmp_path: Path) -> None:
    root = tmp_path / "repository"
    shutil.copytree(added.path / "gru", root / "gru")  # a good entry: not listed
    edit(added, root, "tagger", graph={"output_activation": "softmax"})
    edit(added, root, "classifier", padding="exact")
    for name, size in (("smaller", 40), ("larger", 64)):
        target = root / name / "1"
        shutil.copytree(added.path / "tagger" / "1", target)
        document = model_json(added.path, "tagger") | {"name": name}
        document["input"]["vocabulary_size"] = size
        (target / "model.json").write_text(json.dumps(document))
    text = root / "text" / "1"  # the tagger's graph fed by a character vocabulary a few entries short
    shutil.copytree(added.path / "tagger" / "1", text)
    document = model_json(added.path, "tagger") | {"name": "text"}
    vocabulary = ["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz0123456789.,;:!?-'"]
    tokenizer = {"type": "char", "lowercase": True, "vocabulary": vocabulary, "padding_id": 0, "unknown_id": 1}
    document["input"] = {"kind": "text", "max_length": 64, "tokenizer": tokenizer}
    (text / "model.json").write_text(json.dumps(document))
    status, out, err = run("validate", str(root))
    assert status == 1
    lines = out.splitlines()
    assert lines == [
        "classifier/1: model.onnx: padding is 'exact' but a padded batch of mixed lengths answers up to "
        + lines[0].split("answers up to ")[1].split(" ")[0]
        + " away from each sequence run alone: set padding to 'equal-length'",
        "larger/1: model.onnx: input.vocabulary_size is 64 but the graph's embedding has 50 rows (ids 0..49): "
        "ids and rows would not line up",
        "smaller/1: model.onnx: input.vocabulary_size is 40 but the graph's embedding has 50 rows (ids 0..49): "
        "ids and rows would not line up",
        "tagger/1: model.onnx: graph.output_activation is 'softmax' but graph output 'output_0' is already a "
        "probability distribution (each row in [0, 1], summing to 1): softmax would be applied twice; set it to "
        "'none'",
        f"text/1: model.onnx: the vocabulary has {len(vocabulary)} but the graph's embedding has 50 rows (ids 0..49): "
        "ids and rows would not line up",
    ]
    assert err.strip() == "5 of 6 entries have problems"
    assert run("validate", str(added.path))[:2] == (0, "4 entries checked: all valid\n")


def test_a_text_model_from_a_graph_and_its_character_vocabulary(added: AddedRepository, tmp_path: Path) -> None:
    # the tagger's 50 ids as characters: the server tokenizes, and refuses characters it has no id for
    vocabulary = ["<pad>", *"abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?-'()[]"]
    assert len(vocabulary) == 50
    (tmp_path / "vocabulary.json").write_text(json.dumps(vocabulary))
    tagger, root = str(added.graphs["tagger"].path), tmp_path / "repository"
    flags = ["--labels", ",".join(TAGS), "--vocabulary", str(tmp_path / "vocabulary.json"), "--lowercase"]
    status, out, err = run("add", tagger, "--repository", str(root), "--name", "chars", *flags)
    assert status == 0, err
    assert "text: a vocabulary of 50 characters, lowercase on; characters outside it are refused (422)" in out
    assert model_json(root, "chars")["input"]["tokenizer"]["unknown"] == "reject"

    cased = [*vocabulary[:-1], "A"]  # 'A' would never be reached under lowercasing
    (tmp_path / "cased.json").write_text(json.dumps(cased))
    flags[3] = str(tmp_path / "cased.json")
    status, _, err = run("add", tagger, "--repository", str(root), "--name", "cased", *flags)
    assert status == 1 and "'A' is upper case and lowercase is on: 'a' (id 1) is there too" in err

    ids = {character: i for i, character in enumerate(vocabulary)}
    with run_server(root, log_dir=tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post("/v1/models/chars/predict", json={"inputs": ["Ada Lovelace", "(1843)"]})
        assert answer.status_code == 200, answer.text
        for text, output in zip(["ada lovelace", "(1843)"], answer.json()["outputs"], strict=True):
            expected = added.graphs["tagger"].reference([ids[c] for c in text])
            assert np.abs(np.asarray(output["probabilities"]) - expected).max() <= 1e-4
        refused = client.post("/v1/models/chars/predict", json={"inputs": ["Ada", "Zoë"]})
        assert refused.status_code == 422
        assert refused.json()["error"]["message"] == "inputs[1][2]: character 'ë' is not in the model's vocabulary"
