"""Markdown tables for the README, read from a built model repository.

python -m models.report repository
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Entry = tuple[dict[str, Any], dict[str, Any]]
"""One version's ``model.json`` and ``parity.json``."""


def entries(repository: Path) -> list[Entry]:
    out = []
    for meta_path in sorted(repository.glob("*/*/model.json")):
        parity = json.loads((meta_path.parent / "parity.json").read_text())
        out.append((json.loads(meta_path.read_text()), parity))
    return out


def metrics_table(rows: list[Entry]) -> str:
    lines = ["| model | task | data (held-out split) | held-out | baseline |", "| --- | --- | --- | --- | --- |"]
    for meta, _ in rows:
        m = meta["metrics"]
        held = ", ".join(f"{k} {v}" for k, v in m["held_out"].items())
        base = m["baseline"]
        base_text = ", ".join(f"{k} {v}" for k, v in base.items() if k != "name")
        lines.append(
            f"| `{meta['name']}` v{meta['version']} | {meta['task']} | {m['split']} | {held} | "
            f"{base['name']}: {base_text} |"
        )
    return "\n".join(lines)


def parity_table(rows: list[Entry]) -> str:
    lines = [
        "| model | sequences checked (batches, lengths) | eager | ONNX Runtime | TorchScript |",
        "| --- | --- | --- | --- | --- |",
    ]
    for meta, p in rows:
        d = p["max_abs_diff"]
        lines.append(
            f"| `{meta['name']}` | {p['sequences']} ({p['batches']} batches of {min(p['batch_sizes'])}-"
            f"{max(p['batch_sizes'])}, lengths {p['min_length']}-{p['max_length']}) | "
            f"{d['eager']:.1e} | {d['onnx']:.1e} | {d['torchscript']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    repository = Path(sys.argv[1] if len(sys.argv) > 1 else "repository")
    rows = entries(repository)
    print(metrics_table(rows))
    print()
    print(parity_table(rows))


if __name__ == "__main__":
    main()
