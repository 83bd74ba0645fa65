"""Measure the zero-spec export for the README's bring-your-own table.

    PYTHONPATH=. python -m tests.models.measure_zero_spec [--batches 50] [--max-length 64]

Exports every module of ``test_zero_spec.py`` with no spec (randomised weights),
times each export, reads the worst differences export measured (ONNX Runtime,
TorchScript) from ``parity.json``, then serves the repository and measures the
worst difference over HTTP against the user's module run on each sequence alone.
Prints one Markdown row per module.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from models.checkpoint_export import export_module
from models.spec import UserModule
from models.vocab import load_tokenizer
from tests.models.test_zero_spec import (
    CASES,
    CHARS,
    TEXTS,
    WORDS,
    alone,
    make_module,
    padded,
    save,
    served_expectation,
    user_char_ids,
    user_word_ids,
)
from tests.service.api.conftest import run_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    rows: list[tuple[str, Any, Path, float, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "words.json").write_text(json.dumps(WORDS))
        (folder / "chars.txt").write_text("\n".join(CHARS) + "\n")
        for case_id, case in CASES.items():
            obj = make_module(case_id)
            checkpoint = save(case_id, obj, folder)
            tokenizer = None
            if case.text == "word":
                tokenizer = load_tokenizer(folder / "words.json", "word")
            elif case.text == "char":
                tokenizer = load_tokenizer(folder / "chars.txt", "char", lowercase=True)
            started = time.monotonic()
            result = export_module(
                checkpoint,
                UserModule(case.source, case.cls, case.kwargs),
                folder / "repo",
                tokenizer=tokenizer,
                max_length=args.max_length,
                batches=args.batches,
                given={"name": case_id.lower()},
            )
            rows.append((case_id, obj, result.path, time.monotonic() - started, result))
        http = measure_http(folder / "repo", rows, args.max_length, folder)
        print("| shape | settled | ONNX Runtime | TorchScript | HTTP | export |")
        print("| --- | --- | --- | --- | --- | --- |")
        for case_id, _, path, seconds, result in rows:
            parity = json.loads((path / "parity.json").read_text())["max_abs_diff"]
            meta = json.loads((path / "model.json").read_text())
            cells = " | ".join(f"{parity[g]:.1e}" if g in parity else "not written" for g in ("onnx", "torchscript"))
            what = summary(meta, result)
            print(f"| {case_id} | {what} | {cells} | {http[case_id]:.1e} | {seconds:.1f} s |", flush=True)


def summary(meta: dict[str, Any], result: Any) -> str:
    if meta["padding"] == "equal-length":
        return "equal lengths only"
    a = meta["architecture"]
    parts = [f"{meta.get('family') or ''} {a['cell']}".strip(), a["readout"]]
    if a.get("head_layers") == []:
        parts.append("no head")
    if a.get("output_activation") not in (None, "none"):
        parts.append(a["output_activation"])
    return ", ".join(parts)


def measure_http(
    repository: Path, rows: list[tuple[str, Any, Path, float, Any]], max_length: int, logs: Path
) -> dict[str, float]:
    worst: dict[str, float] = {}
    tokenizers = {"word": user_word_ids, "char": user_char_ids}
    with run_server(repository, log_dir=logs) as server:
        for case_id, obj, path, _, _ in rows:
            case = CASES[case_id]
            meta = json.loads((path / "model.json").read_text())
            if case.text:
                inputs: list[Any] = TEXTS[case.text]
                sequences = [np.array(tokenizers[case.text](t), dtype=np.int64) for t in inputs]
            else:
                rng = np.random.default_rng(0)
                lengths = [1, max_length, *rng.integers(1, max_length + 1, size=14).tolist()]
                if case.equal_length:
                    lengths = [int(n) for n in lengths for _ in range(2)]
                x, n = padded(case, lengths, seed=7)
                sequences = [x[i, :length] for i, length in enumerate(n)]
                inputs = [s.tolist() for s in sequences]
            reply = httpx.post(f"{server.url}/v1/models/{meta['name']}/predict", json={"inputs": inputs}, timeout=120)
            reply.raise_for_status()
            diff = 0.0
            for seq, output in zip(sequences, reply.json()["outputs"], strict=True):
                key, want = served_expectation(meta, alone(case, obj, seq))
                got = np.asarray(output[key], dtype=np.float64)
                diff = max(diff, float(np.abs(got - want.reshape(got.shape)).max()))
            worst[case_id] = diff
    return worst


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
