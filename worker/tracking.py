"""Each finished job as an MLflow run, on the tracking server the operator configures
(KD_MLFLOW_URI; a job opts out with spec tracking.mlflow: false).

The run holds the spec flattened into parameters, the per-epoch validation and loss
curves and the test figures as metrics, and the job's outputs as artifacts. Logging
is best effort: a tracking server that is down or refuses costs the job nothing; the
job's events say what happened (`tracking`, with the run's id or the error).

The client is an explicit MlflowClient (no process-wide mlflow.set_tracking_uri): one
worker process runs several jobs at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from app.settings import Settings

MAX_PARAMS = 500  # of the flattened spec; MLflow takes at most 100 per batch call
MAX_PARAM_CHARS = 500
PRIVATE_FIELDS = ("webhook_url",)  # may carry a receiver's token: not for MLflow's readers


def wanted(settings: Settings, spec: dict[str, Any]) -> bool:
    return bool(settings.mlflow_uri) and (spec.get("tracking") or {}).get("mlflow", True)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """{"training": {"lr": 0.1}} -> {"training.lr": "0.1"}; lists stay one value."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, child in value.items():
            out.update(flatten(child, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(value)[:MAX_PARAM_CHARS]} if prefix else {}


def _metrics(report: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step): per-epoch curves, then the test figures at the last epoch."""
    out = []
    for h in report.get("history") or []:
        for key in ("loss", "accuracy", "mse"):
            if isinstance(h.get(key), int | float):
                out.append((f"val_{key}", float(h[key]), h["epoch"]))
        for term, value in (h.get("train_losses") or {}).items():
            out.append((f"train_{term}", float(value), h["epoch"]))
    last = len(report.get("history") or [])
    for role in ("student", "teacher", "baseline"):
        for key in ("accuracy", "mse", "latency_ms_batch1", "parameters", "bytes_on_disk"):
            value = (report.get(role) or {}).get(key)
            if isinstance(value, int | float):
                out.append((f"{role}_{key}", float(value), last))
    for key in ("agreement", "kd_gain", "compression_ratio", "speedup_batch1"):
        if isinstance(report.get(key), int | float):
            out.append((key, float(report[key]), last))
    for trial in (report.get("sweep") or {}).get("trials") or []:
        if trial.get("score") is not None:
            out.append(("sweep_trial_score", float(trial["score"]), trial["trial"]))
    return out


def experiment_name(settings: Settings, tenant_id: str) -> str:
    """Each tenant's runs in an experiment of its own (KD_MLFLOW_EXPERIMENT/<tenant id>):
    one tenant's parameters and outputs are never listed beside another's."""
    return f"{settings.mlflow_experiment}/{tenant_id}" if tenant_id else settings.mlflow_experiment


def log_job(
    settings: Settings,
    job_id: str,
    tenant_id: str,
    spec: dict[str, Any],
    report: dict[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """Log one finished job; returns the event's data: the run's ids, or the error."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(settings.mlflow_timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=settings.mlflow_uri)
        name = experiment_name(settings, tenant_id)
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(name, tags={"kdservice.tenant_id": tenant_id})
        )
        tags = {
            "kdservice.job_id": job_id,
            "kdservice.kind": str(spec.get("kind")),
            "kdservice.tenant_id": tenant_id,
        }
        run = client.create_run(experiment_id, run_name=str(spec.get("name")), tags=tags)
        run_id = run.info.run_id
        public = {k: v for k, v in spec.items() if k not in PRIVATE_FIELDS}
        params = [Param(k, v) for k, v in list(flatten(public).items())[:MAX_PARAMS]]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v, step in _metrics(report)]
        for i in range(0, max(len(params), len(metrics)), 100):  # the batch limits
            client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100])
        for entry in (report.get("files") or {}).values():
            client.log_artifact(run_id, str(out_dir / entry["name"]), "outputs")
        client.log_artifact(run_id, str(out_dir / "report.json"))
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001 (server down, refused, timeout): not the job's fault
        return {"mlflow": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"mlflow": "logged", "run_id": run_id, "experiment_id": experiment_id}
