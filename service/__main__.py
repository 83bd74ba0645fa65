"""`python -m service` and `seqserve serve`: parse flags into Settings and run the server.

Every Settings field is a `--flag` (field name with dashes) and a
`SEQSERVE_<FIELD>` environment variable; flags win over the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing

from pydantic import ValidationError

from service.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqserve serve",
        description="Serve a seqserve model repository over HTTP. Every flag also reads SEQSERVE_<NAME>.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"SEQSERVE_{name.upper()}"
        default = field.default.get_secret_value() if hasattr(field.default, "get_secret_value") else field.default
        help_text = f"{field.description or ''} [env {env}; default {default}]"
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                flag, dest=name, choices=choices, default=argparse.SUPPRESS, help=help_text, metavar=None
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a malformed flag (argparse printed why)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        settings = Settings(**vars(args))
    except ValidationError as exc:
        for error in exc.errors():
            where = "-".join(map(str, error["loc"])).replace("_", "-")
            print(f"seqserve serve: {'--' + where + ': ' if where else ''}{error['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not settings.repository.is_dir():
        print(f"seqserve serve: repository {settings.repository} is not a directory", file=sys.stderr)
        return 2

    from service.workers import serve_workers, worker_count

    count, why = worker_count(settings)
    log = logging.getLogger("service")
    log.info("%d HTTP process%s: %s", count, "" if count == 1 else "es", why)
    if count > 1:  # NOTE: the parent only supervises: it never imports the server (uvicorn, gRPC, the runtimes)
        return serve_workers(settings, count)
    from service.runner import serve

    serve(settings.model_copy(update={"http_workers": 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
