"""The /sync query threads: results and errors come back to the awaiting request, the thread
count stays within its limit, closing cancels what no thread took yet, and a program that never
closes them still ends (after its running calls)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mirror.server.workers import QueryThreads

ROOT = Path(__file__).resolve().parents[1]


def test_a_call_runs_off_the_loop_and_its_result_comes_back() -> None:
    threads = QueryThreads(2)

    async def main() -> tuple[int, str]:
        return await threads.run(lambda: (41 + 1, threading.current_thread().name))

    value, name = asyncio.run(main())
    threads.close()
    assert value == 42 and name.startswith("mirror-sync") and name != "MainThread"


def test_an_exception_reaches_the_awaiting_request() -> None:
    threads = QueryThreads(1)

    def fail() -> None:
        raise KeyError("nope")

    async def main() -> None:
        await threads.run(fail)

    with pytest.raises(KeyError, match="nope"):
        asyncio.run(main())
    threads.close()


def test_calls_beyond_the_limit_wait_for_a_thread_and_all_finish() -> None:
    threads = QueryThreads(2)
    running, most = 0, 0
    lock = threading.Lock()
    gate = threading.Event()

    def call(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        gate.wait(5)
        with lock:
            running -= 1
        return i

    async def main() -> list[int]:
        tasks = [asyncio.ensure_future(threads.run(lambda i=i: call(i))) for i in range(6)]
        await asyncio.sleep(0.2)
        gate.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == list(range(6))
    threads.close()
    assert most == 2 and len(threads._threads) == 2


def test_closing_cancels_the_calls_no_thread_took() -> None:
    threads = QueryThreads(1)
    gate = threading.Event()

    async def main() -> tuple[object, object]:
        first = asyncio.ensure_future(threads.run(lambda: gate.wait(5)))
        second = asyncio.ensure_future(threads.run(lambda: "never"))
        await asyncio.sleep(0.1)  # the one thread holds the first call
        threads.close()
        gate.set()
        done = await asyncio.gather(first, second, return_exceptions=True)
        return done[0], done[1]

    first, second = asyncio.run(main())
    assert first is True and isinstance(second, asyncio.CancelledError)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(threads.run(lambda: None))


def test_the_program_ends_without_close_once_running_calls_finish() -> None:
    program = ("import asyncio, time\nfrom mirror.server.workers import QueryThreads\n"
               "t = QueryThreads(4)\n"
               "async def main():\n"
               "    asyncio.ensure_future(t.run(lambda: (time.sleep(0.5), print('finished'))))\n"
               "    return await asyncio.gather(*(t.run(lambda: 1) for _ in range(3)))\n"
               "print(sum(asyncio.run(main())))\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["3", "finished"], done.stderr[-2000:]
    assert time.monotonic() - started < 10  # idle threads do not keep it alive
