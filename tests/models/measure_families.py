"""Measure each family's worst difference for the README's family table.

    PYTHONPATH=. python -m tests.models.measure_families [--batches 100] [--max-length 64]

Exports every tutorial module of ``test_families.py`` (randomised weights)
with the full parity check against the user's own module and prints one
Markdown row per family from the written ``parity.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from models.checkpoint_export import export_checkpoint
from tests.models.test_families import CASES, make_user_model, save_checkpoint, spec_dict, write_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    print("| case | user module | formats | sequences (lengths) | eager | ONNX Runtime | TorchScript |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case_id, case in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            checkpoint = save_checkpoint(case, make_user_model(case), folder)
            spec = spec_dict(case, case_id.lower(), max_length=args.max_length)
            entry = export_checkpoint(checkpoint, write_spec(spec, folder), folder / "repo", batches=args.batches)
            meta = json.loads((entry / "model.json").read_text())
            parity = json.loads((entry / "parity.json").read_text())
            d = parity["max_abs_diff"]
            cells = " | ".join(f"{d[g]:.1e}" if g in d else "not exported" for g in ("eager", "onnx", "torchscript"))
            print(
                f"| {case_id} | `{case.cls}` | {', '.join(meta['formats'])} | {parity['sequences']} "
                f"({parity['min_length']}-{parity['max_length']}) | {cells} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
