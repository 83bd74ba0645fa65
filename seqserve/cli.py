"""The ``seqserve`` command: one entry point for both sides of the house.

``serve`` belongs to the online side (``service/``, no torch needed);
``train``, ``export``, ``inspect`` and ``add`` to the offline side (``models/``); ``validate``
checks a repository as the server's loader does (``service/``);
``bench`` drives a running server with load (``bench/``).
Each is imported only when asked for.
"""

from __future__ import annotations

import sys

USAGE = """usage: seqserve <command> [options]

commands:
  serve     serve a model repository over HTTP (seqserve serve --help)
  train     train the demo models on data shipped inside packages
  export    check a checkpoint against its module and write a repository entry
  add       add an ONNX or TorchScript graph you exported yourself as a repository entry (seqserve add --help)
  validate  check every entry of a model repository offline, as the server does when loading it
  inspect   list a checkpoint's tensors and suggest a spec
  bench     measure the server against the in-process ceiling and the unbatched floor (seqserve bench --help)
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from service.__main__ import main as serve

        return serve(rest)
    if command == "validate":
        from service.validate import main as validate

        return validate(rest)
    if command in ("train", "export", "inspect", "add"):
        from models.cli import main as offline

        return offline(command, rest)
    if command == "bench":
        from bench.run import main as bench

        return bench(rest)
    print(f"seqserve: error: unknown command {command!r}; try 'seqserve --help'", file=sys.stderr)
    return 2
