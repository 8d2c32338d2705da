"""One job across hosts (resources.nodes), on hosts built as network namespaces
(tests.support.netns): the service, PostgreSQL and Redis in the test's namespace, one
`kd worker` in each host's, torchrun's agents and gloo over the hosts' veth addresses,
the job folder on the one disk they share (as a shared volume would be)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file
from sqlalchemy import select, text

from app.db.models import JobSlot
from app.db.session import get_engine, session_scope
from tests.faults.cluster import MARK, Cluster
from tests.faults.servers import OwnPostgres, OwnRedis
from tests.support import netns
from tests.support.procs import Proc, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=333)]
TERMINAL = ("succeeded", "failed", "cancelled")


def job_spec(name: str, epochs: int = 4, **resources: int) -> dict[str, Any]:
    """An MLP on 640 synthetic images, 448 of them to train on (the default splits hold
    out 10% and 20%): 14 steps an epoch with 2 ranks of 16."""
    return {
        "name": name,
        "kind": "train",
        "student": {"arch": "mlp_small"},
        "dataset": {"builtin": "synthetic", "num_samples": 640, "num_classes": 4},
        "training": {
            "epochs": epochs,
            "batch_size": 16,
            "precision": "fp32",
            "device": "cpu",
            "seed": 3,
        },
        "resources": {"nodes": 1, "gpus": 1, **resources},
    }


class MultiHost:
    """A cluster whose workers run on the hosts of a tests.support.netns.Hosts."""

    def __init__(self, tmp: Path, hosts: netns.Hosts, redis: OwnRedis, pg: OwnPostgres):
        self.hosts = hosts
        self.cluster = Cluster(
            tmp,
            redis,
            pg,
            KD_GANG_WAIT_S="4",
            KD_KEEP_CHECKPOINTS="10",
            KD_COLLECTIVE_TIMEOUT_S="10",  # a peer cut off fails the step in seconds
        )
        self.cluster.start_api()
        self.workers: dict[int, Proc] = {}

    def start(self, i: int, queues: str = "kd") -> Proc:
        host = self.hosts.hosts[i]
        gateway = self.hosts.gateway
        env = {
            "KD_DATABASE_URL": self.cluster.db_url.replace("127.0.0.1", gateway),
            "KD_BROKER_URL": self.cluster.env["KD_BROKER_URL"].replace("127.0.0.1", gateway),
            "KD_NODE_ADDR": host.address,
            "KD_NODE_IFNAME": host.interface,
        }
        command = host.command([sys.executable, "-m", "kdservice.cli"])
        self.workers[i] = self.cluster.start_worker(env, command, queues)
        return self.workers[i]

    def kill_host(self, i: int) -> None:
        """SIGKILL host i's worker and every process of its part of a job (agent, ranks)."""
        self.cluster.kill_worker(self.workers[i])
        address = self.hosts.hosts[i].address
        for pid in _marked(self.cluster.mark, f"KD_NODE_ADDR={address}"):
            os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self.cluster.close()
        leftover = _marked(self.cluster.mark, "")
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        assert leftover == [], "a process of a multi-host job outlived its worker"


def _marked(mark: str, also: str) -> list[int]:
    """Training processes of this cluster (agents and ranks), by their environment."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"worker.node_process" not in (proc / "cmdline").read_bytes():
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in environ and (not also or also.encode() in environ):
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def hosts() -> Iterator[netns.Hosts]:
    why = netns.available()
    assert why is None, why  # the CI machine is root with iproute2: a real failure
    made = netns.Hosts(2)
    yield made
    made.close()


@pytest.fixture(scope="module")
def servers(hosts: netns.Hosts) -> Iterator[tuple[OwnRedis, OwnPostgres]]:
    listen = ("127.0.0.1", hosts.gateway)
    redis = OwnRedis(first_port=17379, listen=listen)
    pg = OwnPostgres(first_port=17432, listen=listen, trust=f"10.{hosts.subnet}.0.0/24")
    yield redis, pg
    redis.stop()
    pg.close()


@pytest.fixture
def multi(tmp_path: Path, hosts: netns.Hosts, servers: tuple[OwnRedis, OwnPostgres]):
    m = MultiHost(tmp_path, hosts, *servers)
    yield m
    m.close()


def epoch_losses(cluster: Cluster, job_id: str) -> list[float]:
    return [e[2]["losses"]["loss"] for e in cluster.events(job_id) if e[1] == "epoch"]


def weights(cluster: Cluster, job_id: str) -> dict[str, Any]:
    return load_file(cluster.tmp / "data" / "jobs" / job_id / "student.safetensors")


def node0(multi: MultiHost, job_id: str) -> int:
    """The index of the host that is node 0 of the job's attempt: the one whose agent
    hosts the rendezvous store, the hardest host to lose."""
    placed = [e[2] for e in multi.cluster.events(job_id) if e[1] == "hosts"][-1]
    address = next(h["host"] for h in placed["hosts"] if h["node_rank"] == 0)
    return next(i for i, h in enumerate(multi.hosts.hosts) if h.address == address)


def slots_held(cluster: Cluster, job_id: str) -> list[str]:
    with session_scope(cluster.db_url) as s:
        return list(s.scalars(select(JobSlot.host).where(JobSlot.job_id == job_id)))


def test_two_hosts_train_as_one_host_with_two_ranks(multi: MultiHost) -> None:
    c = multi.cluster
    multi.start(0, queues="kd,kd.x2")
    multi.start(1)
    one = c.submit(job_spec("one-host", gpus=2))  # the same 2 ranks and global batch
    assert c.wait_status(one, TERMINAL, 300)["status"] == "succeeded"
    two = c.submit(job_spec("two-hosts", nodes=2))
    assert c.wait_status(two, TERMINAL, 300)["status"] == "succeeded"
    assert c.audit(two)["attempts"] == 1
    assert c.job(two)["report"]["processes"] == 2
    assert epoch_losses(c, two) == pytest.approx(epoch_losses(c, one), rel=1e-4)
    a, b = weights(c, one), weights(c, two)
    assert a.keys() == b.keys()
    for name in a:
        assert abs(a[name] - b[name]).max() < 1e-4, name
    events = c.events(two)
    placed = [e[2] for e in events if e[1] == "hosts"]
    addresses = sorted(h.address for h in multi.hosts.hosts)
    assert len(placed) == 1 and sorted(h["host"] for h in placed[0]["hosts"]) == addresses
    assert sorted(r for h in placed[0]["hosts"] for r in h["ranks"]) == [0, 1]
    rates = [e[2] for e in events if e[1] == "host"]
    assert sorted({r["host"] for r in rates}) == addresses  # each host's throughput
    assert all(r["rate"] > 0 and r["unit"] == "images/s" for r in rates)
    # every host releases its place (the other member may end a moment after the job)
    wait_until(lambda: slots_held(c, two) == [], 30, "both hosts to release their places")


def test_a_host_killed_mid_epoch_resumes_on_a_new_gang(multi: MultiHost) -> None:
    c = multi.cluster
    multi.start(0)
    multi.start(1)
    reference = c.submit(job_spec("uninterrupted", epochs=12, nodes=2))
    assert c.wait_status(reference, TERMINAL, 300)["status"] == "succeeded"
    job = c.submit(job_spec("killed", epochs=12, nodes=2))  # long enough to kill mid-run
    wait_until(lambda: max(c.checkpoint_epochs(job), default=0) >= 1, 300, "epoch 1's checkpoint")
    time.sleep(0.5)  # into epoch 2
    victim = node0(multi, job)  # the host of the rendezvous store
    multi.kill_host(victim)
    lost = wait_until(
        lambda: [e[2] for e in c.events(job) if e[1] == "node_lost"], 120, "a node_lost event"
    )
    assert [n["host"] for n in lost] == [multi.hosts.hosts[victim].address]
    multi.start(victim)  # the host comes back: the job gathers two hosts again
    end = c.wait_status(job, TERMINAL, 300)
    audit = c.audit(job)  # one terminal transition, no two runs at once, no event gap
    assert end["status"] == "succeeded" and audit["attempts"] == 2, (end, audit)
    one_epoch = audit["total_steps"] // 12
    assert one_epoch > 0, audit
    # resumed from a checkpoint, not from the start: epoch 1's at least (epoch 2's when
    # the kill came after it was written)
    assert audit["resume_steps"][1] is not None and audit["resume_steps"][1] >= one_epoch
    epochs = [e[2]["epoch"] for e in c.events(job) if e[1] == "epoch"]
    assert epochs.count(12) == 1  # the last epoch counted once
    a, b = weights(c, reference), weights(c, job)
    for name in a:
        assert abs(a[name] - b[name]).max() < 1e-5, name


def test_a_host_cut_off_mid_epoch_is_named_and_the_job_resumes(multi: MultiHost) -> None:
    c = multi.cluster
    multi.start(0)
    multi.start(1)
    job = c.submit(job_spec("cut-off", epochs=12, nodes=2))
    wait_until(lambda: max(c.checkpoint_epochs(job), default=0) >= 1, 300, "epoch 1's checkpoint")
    cut = multi.hosts.hosts[node0(multi, job)]  # the host of the rendezvous store
    multi.hosts.cut(cut)
    try:
        lost = wait_until(
            lambda: [e[2] for e in c.events(job) if e[1] == "node_lost"], 120, "a node_lost event"
        )
    finally:
        multi.hosts.restore(cut)  # the link comes back: the host rejoins the pool
    assert [n["host"] for n in lost] == [cut.address]
    end = c.wait_status(job, TERMINAL, 300)
    audit = c.audit(job)
    assert end["status"] == "succeeded" and audit["attempts"] == 2, (end, audit)
    epochs = [e[2]["epoch"] for e in c.events(job) if e[1] == "epoch"]
    assert epochs.count(12) == 1


def test_one_free_host_claims_nothing_and_a_placed_gang_cancels_whole(multi: MultiHost) -> None:
    c = multi.cluster
    multi.start(0)
    gang = c.submit(job_spec("needs-two", epochs=40, nodes=2))
    time.sleep(6)  # past KD_GANG_WAIT_S: the lone offer was made and withdrawn
    single = c.submit(job_spec("one-host"))
    assert c.wait_status(single, TERMINAL, 300)["status"] == "succeeded"
    assert c.job(gang)["status"] == "queued"
    assert c.job(gang)["attempt"] == 0  # never claimed
    assert [e for e in c.events(gang) if e[1] == "attempt"] == []
    with session_scope(c.db_url) as s:  # at most the lone host's offer, never placed
        offers = list(s.scalars(select(JobSlot).where(JobSlot.job_id == gang)))
        assert len(offers) <= 1 and all(o.node_rank is None for o in offers)
    multi.start(1)  # a second host: the gang forms; cancelling it stops both hosts
    wait_until(lambda: c.job(gang)["status"] == "running", 120, "the 2-node job to start")
    wait_until(lambda: any(e[1] == "epoch" for e in c.events(gang)), 120, "its first epoch")
    assert c.client.post(f"/v1/jobs/{gang}/cancel").status_code in (200, 202)
    assert c.wait_status(gang, TERMINAL, 120)["status"] == "cancelled"
    assert c.audit(gang)["status"] == "cancelled"  # ended once
    wait_until(lambda: _marked(c.mark, "") == [], 60, "every agent and rank to end")
    wait_until(lambda: slots_held(c, gang) == [], 60, "both hosts to release their places")


HOLD_A_ROW = """
import sys, time
from sqlalchemy import text
from app.db.session import get_engine
with get_engine(sys.argv[1]).connect() as c:
    c.execute(text("UPDATE cut_rows SET n = n + 1 WHERE id = 1"))  # the row is locked
    print("held", flush=True)
    time.sleep(600)  # the transaction stays open: cut off before it commits
"""


def test_a_host_cut_off_inside_a_transaction_does_not_hold_its_rows(
    hosts: netns.Hosts, servers: tuple[OwnRedis, OwnPostgres], tmp_path: Path
) -> None:
    """What froze a gang's surviving host: a member cut off between its heartbeat's
    UPDATE of the job's row and the COMMIT kept the row locked on the server (which
    hears nothing back, so waits for the system's two-hour keepalive), and the other
    members' heartbeats waited on that lock. The server must give the vanished client
    up (app.db.session.DEAD_PEER_S) and roll its transaction back."""
    _, pg = servers
    with get_engine(pg.url()).begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS cut_rows (id int PRIMARY KEY, n int)"))
        c.execute(text("INSERT INTO cut_rows VALUES (1, 0) ON CONFLICT (id) DO NOTHING"))
    host = hosts.hosts[0]
    url = pg.url().replace("127.0.0.1", hosts.gateway)
    with (tmp_path / "holder.log").open("wb") as log:
        holder = subprocess.Popen(
            host.command([sys.executable, "-c", HOLD_A_ROW, url]),
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held", (tmp_path / "holder.log").read_text()
        hosts.cut(host)
        try:
            # another host's heartbeat, waiting at most a minute for the row
            with get_engine(pg.url()).begin() as c:
                c.execute(text("SET LOCAL lock_timeout = '60s'"))
                c.execute(text("UPDATE cut_rows SET n = n + 10 WHERE id = 1"))
        finally:
            hosts.restore(host)
        with get_engine(pg.url()).connect() as c:  # the cut-off increment was rolled back
            assert c.execute(text("SELECT n FROM cut_rows WHERE id = 1")).scalar() % 10 == 0
    finally:
        holder.kill()
        holder.wait(30)
