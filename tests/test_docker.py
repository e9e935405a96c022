"""docker/: the compose file follows the compose specification, and everything it and the
Dockerfile name (settings, CLI commands and flags, Ray flags) exists in the code.

No Docker daemon is needed: the compose schema is the one vendored in check-jsonschema, validated
in-process (no network), and the commands are resolved through the real click groups.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from importlib import resources
from pathlib import Path

import click
import jsonschema
import pytest
import yaml

from dermground.platform.cli import LAZY_COMMANDS, cli
from dermground.platform.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DRIVER_SCRIPT = DOCKER / "ray-driver.sh"
ENV_EXAMPLE = DOCKER / "env.example"

SETTINGS_VARS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
DERMGROUND_VAR = re.compile(r"\bDERMGROUND_[A-Z0-9_]+\b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
EXPECTED_COMMANDS = {"serve", "ingest"}
CONTINUATION = "\\"  # a Dockerfile line ending in a backslash goes on


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped.removesuffix(CONTINUATION).strip()}".strip()
        if not stripped.endswith(CONTINUATION):
            keyword, _, args = pending.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            pending = ""
    assert not pending, "Dockerfile ends inside a continued instruction"
    return instructions


def interpolate(value: str) -> str:
    """Resolve compose `${VAR:-default}` with its default; a required `${VAR:?msg}` gets a stand-in."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if operator in ("-", ":-"):
            return argument
        if operator in ("?", ":?"):
            return f"stand-in-for-{name.lower()}"
        return ""

    return INTERPOLATION.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def dermground_services(compose: dict) -> dict[str, dict]:
    image = compose["x-dermground-image"]["image"]
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == image}


def image_entrypoint(dockerfile: list[tuple[str, str]]) -> list[str]:
    return json.loads([args for keyword, args in dockerfile if keyword == "ENTRYPOINT"][-1])


def cli_invocation(service: dict, dockerfile: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """(program, arguments) a dermground-image service runs, after compose interpolation."""
    entrypoint = service.get("entrypoint", image_entrypoint(dockerfile))
    command = service.get("command", json.loads([a for k, a in dockerfile if k == "CMD"][-1]))
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if isinstance(command, str):
        command = shlex.split(command)
    argv = [interpolate(str(part)) for part in [*entrypoint, *command]]
    return argv[0], argv[1:]


def option_names(argv: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]


def click_option_names(command: click.Command) -> set[str]:
    names: set[str] = {"--help"}
    for param in command.params:
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    return names


# --- compose specification -------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose: dict) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text())
    # the vendored schema is self-contained: validating it never fetches a remote $ref
    assert not re.search(r'"\$ref"\s*:\s*"https?:', schema_file.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_rejects_a_broken_compose_file(compose: dict) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    validator = jsonschema.Draft202012Validator(json.loads(schema_file.read_text()))
    broken = {**compose, "services": {**compose["services"], "api": {**compose["services"]["api"], "ports": 8000, "helthcheck": {}}}}
    messages = " ".join(e.message for e in validator.iter_errors(broken))
    assert "is not of type 'array'" in messages and "helthcheck" in messages


def test_expected_services_are_there(compose: dict) -> None:
    assert {"qdrant", "ray-head", "ray-worker", "api", "ingest"} <= set(compose["services"])
    assert set(dermground_services(compose)) == {"ray-head", "ray-worker", "api", "ingest"}


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE_FILE, DOCKERFILE, DRIVER_SCRIPT, ENV_EXAMPLE], ids=lambda p: p.name)
def test_every_dermground_variable_is_a_settings_field(path: Path) -> None:
    named = set(DERMGROUND_VAR.findall(path.read_text()))
    assert named, f"{path.name} names no DERMGROUND_ variable: the check would be vacuous"
    assert named - SETTINGS_VARS == set(), f"{path.name} names variables Settings does not have"


@pytest.mark.parametrize("service_name", ["ray-head", "ray-worker", "api", "ingest"])
def test_each_service_environment_loads_as_valid_settings(
    compose: dict, dockerfile: list[tuple[str, str]], service_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    image_env = {}
    for keyword, args in dockerfile:
        if keyword == "ENV":
            image_env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    service_env = {key: interpolate(str(value)) for key, value in compose["services"][service_name]["environment"].items()}
    for key, value in {**image_env, **service_env}.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.home == Path("/data")
    assert settings.qdrant_url == "http://qdrant:6333"
    assert settings.qdrant_api_key is not None
    if service_name == "api":
        assert settings.api_host == "0.0.0.0"
        assert settings.api_read_key is not None and settings.api_admin_key is not None
    if service_name == "ingest":
        assert settings.ray_address == "ray-head:6379"


def test_dermground_services_share_one_qdrant_key_with_the_server(compose: dict) -> None:
    server_key = compose["services"]["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"]
    assert server_key.startswith("${") and ":?" in server_key, "the key must come from the environment, required"
    for name, service in dermground_services(compose).items():
        assert INTERPOLATION.match(service["environment"]["DERMGROUND_QDRANT_API_KEY"]).group(1) == (
            INTERPOLATION.match(server_key).group(1)
        ), name


# --- commands ------------------------------------------------------------------------------------


def test_expected_cli_commands_are_registered() -> None:
    assert EXPECTED_COMMANDS <= set(LAZY_COMMANDS), "compose.yaml runs these; register them in platform/cli.py"


@pytest.mark.parametrize("service_name", ["api", "ingest"])
def test_services_run_existing_cli_commands_with_existing_flags(
    compose: dict, dockerfile: list[tuple[str, str]], service_name: str
) -> None:
    program, args = cli_invocation(compose["services"][service_name], dockerfile)
    if program == "dermground-ray-driver":  # runs `dermground "$@"` after joining the cluster
        assert 'dermground "$@"' in DRIVER_SCRIPT.read_text()
        assert "docker/ray-driver.sh /usr/local/bin/dermground-ray-driver" in DOCKERFILE.read_text()
    else:
        assert program == "dermground"
    assert args[0] in LAZY_COMMANDS, f"{service_name} runs `dermground {args[0]}`, which the CLI lacks"
    command = cli.get_command(click.Context(cli), args[0])
    assert command is not None
    unknown = set(option_names(args[1:])) - click_option_names(command)
    assert unknown == set(), f"`dermground {args[0]}` has no option {sorted(unknown)}"


@pytest.mark.parametrize("service_name", ["ray-head", "ray-worker"])
def test_ray_services_use_real_ray_start_flags(compose: dict, dockerfile: list[tuple[str, str]], service_name: str) -> None:
    from ray.scripts.scripts import start  # the click command behind `ray start`

    program, args = cli_invocation(compose["services"][service_name], dockerfile)
    assert (program, args[0]) == ("ray", "start")
    assert "--block" in args, "without --block the container exits and takes the node with it"
    unknown = set(option_names(args[1:])) - click_option_names(start)
    assert unknown == set()
    num_cpus = [a for a in args if a.startswith("--num-cpus=")]
    assert num_cpus and int(num_cpus[0].split("=", 1)[1]) >= 0


def test_workers_scale_and_join_the_head(compose: dict) -> None:
    worker = compose["services"]["ray-worker"]
    assert int(interpolate(str(worker["deploy"]["replicas"]))) >= 1
    assert "--address=ray-head:6379" in worker["command"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_ingest_is_a_one_shot_job_after_qdrant_and_ray(compose: dict) -> None:
    ingest = compose["services"]["ingest"]
    assert ingest["profiles"] == ["jobs"]
    assert ingest["restart"] == "no"
    assert ingest["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert ingest["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "/data/slice3d" in ingest["command"]


# --- qdrant and health ---------------------------------------------------------------------------


def test_qdrant_is_pinned_persistent_and_keyed(compose: dict) -> None:
    qdrant = compose["services"]["qdrant"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qdrant["image"])
    mounts = {m.split(":")[1]: m.split(":")[0] for m in qdrant["volumes"]}
    assert mounts["/qdrant/storage"] in compose["volumes"], "storage must be a named volume"
    assert "QDRANT__SERVICE__API_KEY" in qdrant["environment"]


def test_qdrant_server_is_within_one_minor_of_the_client(compose: dict) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("qdrant-client"))
    client_minor = int(re.search(r">=\s*1\.(\d+)", pin).group(1))
    server_minor = int(re.search(r":v1\.(\d+)\.", compose["services"]["qdrant"]["image"]).group(1))
    assert abs(server_minor - client_minor) <= 1


@pytest.mark.parametrize("service_name", ["qdrant", "ray-head", "api"])
def test_long_running_services_have_health_checks(compose: dict, service_name: str) -> None:
    healthcheck = compose["services"][service_name]["healthcheck"]
    assert not healthcheck.get("disable") and healthcheck["test"][0] in ("CMD", "CMD-SHELL")
    if service_name == "api":
        assert "/health" in " ".join(healthcheck["test"])


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_installs_pinned_torch_before_the_project(dockerfile: list[tuple[str, str]]) -> None:
    args = {k: v for k, _, v in (a.partition("=") for kw, a in dockerfile if kw == "ARG")}
    runs = [interpolate(a.replace("${TORCH_VERSION}", args["TORCH_VERSION"])) for kw, a in dockerfile if kw == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "pip install" in r and "torch==" in r)
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_step < project_step
    assert "torch==2.13.0" in runs[torch_step]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch==2.13.0" in pyproject["project"]["dependencies"], "keep the image's pin equal to the project's"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu"), "CPU by default"


def test_dockerfile_runtime_contract(dockerfile: list[tuple[str, str]]) -> None:
    env: dict[str, str] = {}
    for keyword, args in dockerfile:
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["DERMGROUND_HOME"] == "/data"
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in dockerfile
    assert ("FROM", "${PYTHON_IMAGE}") in dockerfile
    users = [args for keyword, args in dockerfile if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert image_entrypoint(dockerfile) == ["dermground"]
    assert json.loads([a for k, a in dockerfile if k == "CMD"][-1]) == ["serve"]
    assert "/health" in next(a for k, a in dockerfile if k == "HEALTHCHECK")


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".dermground", "tests", ".env"} <= ignored
    assert "README.md" not in ignored, "pyproject.toml's readme is needed to build the wheel"


def test_the_api_service_passes_every_api_key_setting(compose: dict) -> None:
    """docs/DEPLOY.md lists DERMGROUND_API_ANALYST_KEY among the stack's keys, but the api service did not
    pass it on: set in docker/.env it never reached the server, and /sql stayed admin-only."""
    from dermground.platform.settings import Settings

    keys = {ENV_PREFIX + name.upper() for name in Settings.model_fields if name.startswith("api_") and name.endswith("_key")}
    assert len(keys) == 3, keys
    assert keys <= set(compose["services"]["api"]["environment"]), "keys the api service does not pass on"
    assert keys <= set(DERMGROUND_VAR.findall(ENV_EXAMPLE.read_text())), "keys docker/env.example leaves out"
