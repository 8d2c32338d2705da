"""The Celery application: every Celery setting lives here, shared by the API (which
only publishes) and `kd worker` (which consumes). The database is the truth; a message
only wakes a worker up and carries nothing but the job id.

Why these settings, for tasks that train for minutes to hours on one GPU:

- `task_acks_late=True` + `task_reject_on_worker_lost=True`: the message is acknowledged
  when the task returns, so a worker killed mid-run (SIGKILL, OOM, lost machine) leaves it
  unacknowledged and Redis hands it out again. Late ack alone would risk running a job
  twice; here it is always paired with the conditional claim in the database
  (`repository.claim`), which lets exactly one worker hold a job at a time, so a
  redelivered or duplicate message returns at once.
- `broker_transport_options.visibility_timeout`: with Redis, an unacknowledged message is
  redelivered after this long even if the first worker is still training. We set it
  longer than any lease (default 2 h) and rely on the claim to discard the duplicate.
  Every process (API and workers) must use the same value, hence one place.
- `worker_prefetch_multiplier=1`, concurrency 1: one GPU, one job at a time, and no second
  message reserved behind a long job where another worker could take it. The fresh
  process per job (no memory or CUDA state carried over) is the training process the
  runner starts (`python -m worker.training_process`), so the Celery pool child is NOT recycled per
  task: recycling it (max_tasks_per_child=1) made a job that arrives right after another
  wait about 2 s for the replacement child (bench/api_load.py, POST -> running).
- JSON serialisation only (no pickle); `task_ignore_result`: results live in the database.
- Lost messages (Redis restarted without persistence) are covered by the sweep in
  `worker.maintenance`, which republishes jobs that stay queued.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

TASK_NAME = "kd.run_job"
QUEUE = "kd"  # the default pool; a job with resources.gpu_type "h200" goes to "kd.h200"
MAX_PRIORITY = 9
VISIBILITY_TIMEOUT_S = 2 * 3600


@lru_cache(maxsize=4)
def celery_app(broker_url: str) -> Celery:
    app = Celery("kdservice", broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_default_queue=QUEUE,
        # Redis keeps one list per priority step and pops the most urgent first; with
        # Celery on Redis 0 is the most urgent, so a spec's priority p is sent as 9 - p
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(MAX_PRIORITY + 1)),
            "sep": ":",
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
    )
    return app


def route_for(spec: dict) -> tuple[str, int]:
    """(queue, priority) of a job spec: the one place that maps a spec to a worker pool."""
    resources = spec.get("resources") or {}
    gpu_type, gpus = resources.get("gpu_type"), int(resources.get("gpus") or 1)
    queue = f"{QUEUE}.{gpu_type}" if gpu_type else QUEUE
    if gpus > 1:
        queue += f".x{gpus}"  # only workers started with that many devices listen here
    return queue, int(spec.get("priority") or 0)


def publish(
    broker_url: str, job_id: str, queue: str = QUEUE, priority: int = 0, copies: int = 1
) -> bool:
    """Best effort: the row is already committed; the sweep retries if this fails. A
    multi-host job gets one message per host it needs (`copies`): each wakes a worker
    that offers its host (worker.gang)."""
    if not broker_url:
        return False
    try:
        app = celery_app(broker_url)
        for _ in range(copies):
            app.send_task(
                TASK_NAME,
                args=[job_id],
                queue=queue,
                priority=MAX_PRIORITY - priority,
                retry=False,
            )
        return True
    except Exception:  # broker down: the sweep republishes later  # noqa: BLE001
        return False
