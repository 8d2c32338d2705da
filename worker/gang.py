"""One job on several hosts (resources.nodes M): gang placement, then torch's own
elastic agent on each host.

A worker that takes a message for such a job offers its host (app.db.slots) and waits
up to `gang_wait_s` for M - 1 others: the offer that makes M claims the job and
places all M at once; an offer that waited in vain is withdrawn, and the worker goes
back to other work, holding nothing. Placed, node 0 publishes the rendezvous endpoint
(its address and a port), and each host starts torchrun's agent
(torch.distributed.run: c10d rendezvous, membership, worker health) through
worker.node_process; the agents start the ranks, which run kdcore in the process
group they made. Global rank 0 reports the job (progress, checkpoints, the end) to
its own host's supervisor; every host's local rank 0 reports its host's throughput.
The rest of a member's run is the one-host Supervisor's, with the slot's lease in
place of the job's (worker.supervisor).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from app.db import slots
from app.db.models import hosts_needed
from app.db.session import session_scope
from app.settings import Settings

log = logging.getLogger("kd.worker")
POLL_S = 0.5


@dataclass(frozen=True)
class Seat:
    """This host's place in one attempt of a multi-host job."""

    member: slots.Member
    nodes: int
    gpus: int
    endpoint: str  # host:port where node 0's agent hosts the c10d rendezvous
    hosts: tuple[str, ...]  # by node rank

    @property
    def node_rank(self) -> int:
        return self.member.node_rank


def gather(settings: Settings, job_id: str, wid: str, spec: dict[str, Any]) -> Seat | None:
    """Offer this host and wait for the job's other hosts; the Seat once all M are
    placed, None when this worker holds nothing (no node address, not queued, or no
    gang within gang_wait_s)."""
    if not settings.node_addr:
        return None
    try:
        with session_scope(settings.db_url) as session:
            slot_id = slots.offer(session, job_id, settings.node_addr, wid, settings.lease_s)
    except IntegrityError:  # this host offered at the same moment from another worker
        return None
    if slot_id is None:
        return None
    member = _wait_for_placement(settings, job_id, wid, slot_id, hosts_needed(spec))
    if member is None:
        return None
    endpoint = _rendezvous(settings, job_id, member)
    with session_scope(settings.db_url) as session:
        hosts = tuple(s.host for s in slots.members(session, job_id, member.attempt))
    gpus = int((spec.get("resources") or {}).get("gpus") or 1)
    return Seat(member, hosts_needed(spec), gpus, endpoint, hosts)


def _wait_for_placement(
    settings: Settings, job_id: str, wid: str, slot_id: str, nodes: int
) -> slots.Member | None:
    deadline = time.monotonic() + settings.gang_wait_s
    while True:
        with session_scope(settings.db_url) as session:
            state = slots.waiting(session, slot_id, settings.lease_s)
        if isinstance(state, slots.Member):
            return state
        if state is False:  # expired and deleted: this worker was too slow to renew
            return None
        try:
            with session_scope(settings.db_url) as session:
                placed = slots.place(session, job_id, nodes, wid, settings.lease_s)
        except LookupError:  # an offer went away mid-placement: all of it rolled back
            placed = None
        if placed is not None:
            continue  # the next renewal says whether this host is among them
        if time.monotonic() > deadline or not _still_queued(settings, job_id):
            with session_scope(settings.db_url) as session:
                if slots.withdraw(session, slot_id):
                    log.info("multi-host job %s: no gang of %d, offer withdrawn", job_id, nodes)
                    return None
            continue  # placed meanwhile: run
        time.sleep(POLL_S)


def _still_queued(settings: Settings, job_id: str) -> bool:
    from app.db.models import Job, JobStatus

    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        return job is not None and job.status == JobStatus.QUEUED


def _rendezvous(settings: Settings, job_id: str, member: slots.Member) -> str:
    """Node 0 chooses the port and publishes host:port; the others read it (while
    renewing their slots). Raises TimeoutError when node 0 never publishes."""
    if member.node_rank == 0:
        with socket.socket(_family(member.host)) as s:
            s.bind((member.host, settings.rendezvous_port))
            port = s.getsockname()[1]
        endpoint = f"[{member.host}]:{port}" if ":" in member.host else f"{member.host}:{port}"
        with session_scope(settings.db_url) as session:
            slots.set_rendezvous(session, member.slot_id, endpoint)
        return endpoint
    deadline = time.monotonic() + settings.gang_wait_s + settings.lease_s
    while time.monotonic() < deadline:
        with session_scope(settings.db_url) as session:
            found = slots.rendezvous(session, job_id, member.attempt)
            slots.heartbeat(session, member, job_id, settings.lease_s, None, [])
        if found:
            return found
        time.sleep(POLL_S)
    raise TimeoutError(f"node 0 of job {job_id} published no rendezvous endpoint")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def agent_command(settings: Settings, seat: Seat, job_id: str, payload_file: Path) -> list[str]:
    """torchrun's agent for this host, started through worker.node_process (which dies
    with its supervisor). No restarts inside the agent: a failed rank fails the
    attempt, and the service requeues the job whole from its last checkpoint, on
    whichever hosts gather next (docs/multi-host.md)."""
    conf = f"is_host={'true' if seat.node_rank == 0 else 'false'}"
    conf += f",join_timeout={int(settings.gang_wait_s + settings.lease_s)}"
    return [
        sys.executable,
        "-m",
        "worker.node_process",
        "agent",
        f"--nnodes={seat.nodes}",
        f"--nproc-per-node={seat.gpus}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={seat.endpoint}",
        f"--rdzv-id={job_id}-a{seat.member.attempt}",
        f"--rdzv-conf={conf}",
        f"--local-addr={seat.member.host}",
        "--max-restarts=0",
        "--monitor-interval=0.5",
        "-m",
        "worker.node_process",
        "rank",
        str(payload_file),
    ]


def agent_env(settings: Settings, threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if settings.node_ifname:  # the collectives bind to the network between the hosts
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = settings.node_ifname
    return env


def write_payload(folder: Path, seat: Seat, payload: dict[str, Any]) -> Path:
    """The job for the ranks, in a file (the agent's children read no stdin); 0600."""
    path = folder / f"attempt{seat.member.attempt}-node{seat.node_rank}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**payload, "node_rank": seat.node_rank, "host": seat.member.host}, f)
    return path


def seat_event(seat: Seat) -> dict[str, Any]:
    """The job's `hosts` event: where each node runs, and its ranks."""
    return {
        "attempt": seat.member.attempt,
        "rendezvous": seat.endpoint,
        "hosts": [
            {
                "node_rank": n,
                "host": host,
                "ranks": list(range(n * seat.gpus, (n + 1) * seat.gpus)),
            }
            for n, host in enumerate(seat.hosts)
        ],
    }
