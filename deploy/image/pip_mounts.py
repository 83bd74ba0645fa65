"""The host's pip configuration, as read-only mounts for a container build.

    python deploy/image/pip_mounts.py OUTDIR

Asks the host's pip (`pip config list`: every config file and PIP_* variable)
for its settings, writes them merged into OUTDIR/pip.conf, and prints one
`--volume=SRC:DST:ro` build flag per line: that file at /etc/pip.conf (a
file pip reads everywhere on Linux), and every local file and folder the
settings name (CA bundle, constraints, find-links folders, the folder holding
a file:// index) at its own path. The build's pip then reaches the same
indexes, trusting the same CAs, and none of their content stays in the image
(podman leaves empty mount points). Prints nothing when this Python has no pip
or pip has no settings.
"""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

PATH_KEYS = ("cert", "client-cert", "constraint", "requirement", "find-links", "index-url", "extra-index-url")
CONF_IN_BUILD = "/etc/pip.conf"
HOST_ONLY = ("python", "target", "prefix", "root", "src", "user", "log")
"""Settings about the host's own environment (e.g. PIP_PYTHON, --python), not about where packages come from."""


def settings() -> dict[str, dict[str, str]]:
    """{section: {key: value}}; PIP_* variables (`:env:`) override the files, as in pip."""
    try:
        env = {k: v for k, v in os.environ.items() if k != "PIP_PYTHON"}  # this Python's own pip, not another's
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env=env,
        ).stdout
    except (subprocess.CalledProcessError, OSError):
        return {}
    merged: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, raw = line.partition("=")
        if not sep or "." not in name:
            continue
        section, _, key = name.rpartition(".")
        value = str(ast.literal_eval(raw))
        if section == ":env:":
            env[key] = value
        else:
            merged.setdefault(section, {})[key] = value
    merged.setdefault("global", {}).update(env)
    for values in merged.values():
        for key in HOST_ONLY:
            values.pop(key, None)
    if "cert" not in merged["global"]:
        for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            if os.environ.get(variable):
                merged["global"]["cert"] = os.environ[variable]
                break
    return {section: values for section, values in merged.items() if values}


def local_paths(value: str) -> list[Path]:
    paths = []
    for token in value.split():
        if token.startswith("file:"):
            token = unquote(urlparse(token).path)
        if token.startswith("/") and Path(token).exists():
            paths.append(Path(token))
    return paths


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    conf = settings()
    if not conf:
        return 0
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser(interpolation=None)
    mounts: dict[Path, None] = {}
    for section, values in conf.items():
        parser[section] = values
        for key, value in values.items():
            if key in PATH_KEYS:
                paths = local_paths(value)
                if key.endswith("index-url"):
                    # A local index's pages link its files relatively (../../files/...): mount its parent.
                    paths = [path.parent for path in paths]
                mounts.update(dict.fromkeys(paths))
    with (out / "pip.conf").open("w") as file:
        parser.write(file)
    print(f"--volume={out / 'pip.conf'}:{CONF_IN_BUILD}:ro")
    for path in mounts:
        print(f"--volume={path}:{path}:ro")
    return 0


if __name__ == "__main__":
    sys.exit(main())
