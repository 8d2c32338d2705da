"""One host's processes of a multi-host job (worker.gang):

    python -m worker.node_process agent <torchrun's arguments>
        dies with its supervisor, then becomes torchrun's agent (exec), which starts
        this host's ranks;
    python -m worker.node_process rank <payload file>
        one rank: dies with its agent, joins the process group the agent's rendezvous
        made (torchrun's environment), and runs the job with kdcore.

Only global rank 0 speaks the supervisor's protocol on stdout (worker.protocol); the
local rank 0 of every other host reports its host's throughput there, and the other
ranks print only to the log.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from worker.training_process import EXIT_CRASH, EXIT_OK, die_with_parent, train


def agent(args: list[str]) -> int:
    die_with_parent()  # kept across exec: the agent dies with the supervisor
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *args])
    return EXIT_CRASH  # not reached


def rank(payload_file: str) -> int:
    die_with_parent()  # a rank does not outlive its agent
    payload: dict[str, Any] = json.loads(Path(payload_file).read_text())
    global_rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, not into the protocol
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    speaks = global_rank == 0 or local_rank == 0

    def send(message: dict[str, Any]) -> None:
        if speaks:
            channel.write(json.dumps(message, default=str) + "\n")

    import torch
    import torch.distributed as dist

    torch.set_num_threads(payload["threads"])
    use_cuda = payload["spec"]["training"].get("device") != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    # torchrun's env://; a peer cut off fails the collective after this, not in 30 min
    timeout = timedelta(seconds=payload["collective_timeout_s"])
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    host = {
        "node_rank": payload["node_rank"],
        "host": payload["host"],
        "share": int(os.environ["LOCAL_WORLD_SIZE"]) / world,
    }
    code = train(payload, send, stop.is_set, host=host, reports_job=global_rank == 0)
    if code != EXIT_OK:
        # a failed group: leave at once. Its goodbyes go through the rendezvous store,
        # which may sit on the very host that was lost, and would wait on it
        channel.flush()
        os._exit(code)
    dist.destroy_process_group()
    return code


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("agent", "rank"):
        print("usage: python -m worker.node_process agent ARGS... | rank PAYLOAD", file=sys.stderr)
        return 2
    if sys.argv[1] == "agent":
        return agent(sys.argv[2:])
    return rank(sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
