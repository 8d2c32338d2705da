"""docker-compose.yml and the Dockerfile, checked by parsing: no Docker engine or compose
plugin runs on CI, so the structure, the commands and the settings are checked here."""

from __future__ import annotations

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


def test_worker_reserves_a_gpu(compose: dict) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


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


def test_dockerfile_runs_kd_as_non_root() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["kd"]' in lines
    copied = {ln.split()[1] for ln in lines if ln.startswith("COPY ")}
    for package in ("kdcore", "kdservice", "app", "worker", "migrations"):
        assert package in copied, f"the image lacks {package}/"
