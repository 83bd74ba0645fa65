"""The Dockerfile, without a Docker engine: hadolint, and what both images must share.

tests/deploy/test_image.py builds nothing either: it runs the built image (`make image-test`)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from dataclasses import dataclass, field

from service.settings import Settings
from tests.deploy.conftest import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        elif stages:
            stages[-1].instructions.append((keyword.upper(), args.strip()))
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def test_hadolint_is_clean_at_warning_level() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            break
        if line.startswith("ARG "):
            name, _, default = line.removeprefix("ARG ").partition("=")
            args[name.strip()] = default.strip()
    return args


def test_cpu_and_gpu_images_run_the_same_stages_differing_only_in_build_args() -> None:
    stages = parse_stages()
    named = {stage.name: stage for stage in stages}
    runtime = stages[-1]  # the default build target
    assert runtime.name == "runtime" and runtime.base == "base"
    assert named["server-venv"].base == "base"
    assert named["base"].base == "${RUNTIME_IMAGE}" and named["build"].base == "${PYTHON_IMAGE}"
    # No stage is chosen by an ARG (buildah 1.28 reads `FROM base-${FLAVOR}` as an image name): every FROM names
    # an earlier stage, or a global ARG whose default is an image.
    defaults = global_args()
    for i, stage in enumerate(stages):
        if stage.base.startswith("$"):
            default = defaults[stage.base.strip("${}")]
            assert ":" in default and default not in named, (stage.name, default)
        else:
            assert stage.base in {earlier.name for earlier in stages[:i]}, stage.name
    assert defaults["RUNTIME_IMAGE"] == defaults["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert defaults["SERVER_EXTRAS"] == "cpu"
    # The base only installs Python where the runtime image lacks it: nothing that runs differs.
    assert {kw for kw, _ in named["base"].instructions} == {"RUN"}
    assert "import ensurepip, venv" in named["base"].all("RUN")[0]
    # The GPU flavour: a CUDA runtime base and onnxruntime-gpu plus torch, as the build script passes them.
    script = (ROOT / "deploy" / "image" / "build.sh").read_text()
    assert '--build-arg RUNTIME_IMAGE="$cuda_image" --build-arg SERVER_EXTRAS=gpu,export' in script
    assert "cuda_image=${CUDA_IMAGE:-nvidia/cuda:" in script


def test_runtime_stage_is_non_root_exec_form_with_health_check_and_volume() -> None:
    runtime = parse_stages()[-1]
    [entrypoint] = runtime.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["seqserve", "serve"]  # exec form: SIGTERM reaches the server
    assert not runtime.all("CMD")
    [user] = runtime.all("USER")
    assert user.split(":")[0] not in ("0", "root")
    [health] = runtime.all("HEALTHCHECK")
    assert "/healthz" in health and "CMD [" in health
    assert "os.environ.get('SEQSERVE_PORT', '8000')" in health  # the port the server listens on
    assert runtime.all("VOLUME") == ['["/models"]']
    env = env_of(runtime)
    assert env["SEQSERVE_REPOSITORY"] == "/models" and env["SEQSERVE_HOST"] == "0.0.0.0"
    assert runtime.all("EXPOSE") == [f"{env['SEQSERVE_PORT']} {env['SEQSERVE_GRPC_PORT']}"]  # HTTP and gRPC
    for name in env:
        if name.startswith("SEQSERVE_"):
            assert name.removeprefix("SEQSERVE_").lower() in Settings.model_fields, name


def test_images_install_through_the_shared_script_and_make_target() -> None:
    stages = {stage.name: stage for stage in parse_stages()}
    [build] = stages["build"].all("RUN")
    assert "deploy/install.sh .venv/bin/python export,demo,cpu" in build and "make models" in build
    # Unless a repository is handed in (DEMO_REPOSITORY), the demo models are trained from source.
    assert build.startswith('if [ -n "$DEMO_REPOSITORY" ]') and 'DEMO_REPOSITORY=""' in stages["build"].all("ARG")
    [server] = stages["server-venv"].all("RUN")
    assert 'deploy/install.sh /opt/seqserve/bin/python "$SERVER_EXTRAS"' in server
    assert "pip install" not in DOCKERFILE.read_text()  # every install goes through deploy/install.sh


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics as far as this file uses them: the last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if (
            pattern == "**"
            or any(fnmatch.fnmatch(p, pattern) for p in prefixes)
            or (pattern.startswith("**/") and any(fnmatch.fnmatch(part, pattern[3:]) for part in parts))
        ):
            ignored = not negate
    return ignored


def test_build_context_holds_every_copied_file_and_no_local_state() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in parse_stages():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not _ignored(source, patterns), f"{source} is outside the build context"
                if (ROOT / source).is_dir():
                    for file in (ROOT / source).rglob("*.py"):
                        assert not _ignored(str(file.relative_to(ROOT)), patterns), file
    for local in (".venv", "repository", "build", ".git", "tests", "service/__pycache__"):
        assert _ignored(local, patterns), local
