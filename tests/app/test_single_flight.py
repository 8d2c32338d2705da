"""SingleFlight: identical calls in flight share one run; failures reach every caller;
other keys are not held up."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.api.single_flight import SingleFlight


def test_identical_calls_in_flight_run_once_and_share_the_answer():
    calls: list[str] = []
    release = threading.Event()

    def slow(key: str) -> str:
        calls.append(key)
        release.wait(5)
        return f"answer {key}"

    async def main() -> list[str]:
        flights = SingleFlight(threads=2)
        waiting = [asyncio.create_task(flights.run("k", slow, "k")) for _ in range(20)]
        other = asyncio.create_task(flights.run("j", slow, "j"))
        await asyncio.sleep(0.2)
        release.set()
        answers = await asyncio.gather(*waiting, other)
        again = await flights.run("k", slow, "k")  # finished flights are not reused
        return [*answers, again]

    answers = asyncio.run(main())
    assert answers[:20] == ["answer k"] * 20 and answers[20] == "answer j"
    assert answers[21] == "answer k"
    assert sorted(calls) == ["j", "k", "k"]


def test_a_failure_reaches_every_caller_and_the_next_call_runs_anew():
    attempts = []

    def failing() -> None:
        attempts.append(1)
        raise LookupError("no such job")

    async def main() -> None:
        flights = SingleFlight(threads=1)
        results = await asyncio.gather(
            *(flights.run("k", failing) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, LookupError) for r in results)
        with pytest.raises(LookupError):
            await flights.run("k", failing)

    asyncio.run(main())
    assert len(attempts) == 2
