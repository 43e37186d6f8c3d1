"""The Execute output coalescer, driven with an explicit clock (no timing), and the
stream that feeds it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from controller.api import sandbox_service
from controller.api.output_chunks import OutputCoalescer


def test_a_print_of_several_writes_is_one_line_chunk() -> None:
    c = OutputCoalescer(flush_seconds=0.05)
    assert c.feed("stdout", b"a", 0.0) == []
    assert c.feed("stdout", b" ", 0.001) == []
    assert c.feed("stdout", b"1", 0.002) == []
    assert c.feed("stdout", b"\n", 0.003) == [("stdout", b"a 1\n")]
    assert c.deadline() is None and c.flush() == []


def test_a_chunk_ends_at_the_last_newline_and_the_rest_waits() -> None:
    c = OutputCoalescer(flush_seconds=0.05)
    assert c.feed("stdout", b"one\ntwo\nthr", 1.0) == [("stdout", b"one\ntwo\n")]
    assert c.deadline() == 1.0 + 0.05
    assert c.due(1.04) == []
    assert c.feed("stdout", b"ee", 1.045) == []
    assert c.deadline() == 1.0 + 0.05, "the oldest held byte sets the deadline"
    assert c.due(1.05) == [("stdout", b"three")]
    assert c.deadline() is None


def test_a_partial_line_goes_out_after_the_flush_interval() -> None:
    c = OutputCoalescer(flush_seconds=0.05)
    assert c.feed("stdout", b"prompt> ", 5.0) == []
    assert c.due(5.049) == []
    assert c.due(5.05) == [("stdout", b"prompt> ")]


def test_long_lines_are_cut_at_the_chunk_cap() -> None:
    c = OutputCoalescer(max_bytes=10)
    out = c.feed("stdout", b"x" * 25 + b"\nyy", 0.0)
    assert out == [("stdout", b"x" * 10), ("stdout", b"x" * 10), ("stdout", b"x" * 5 + b"\n")]
    many = c.feed("stdout", b"\n".join([b"abc"] * 6) + b"\n", 0.0)
    assert all(len(d) <= 10 and d.endswith(b"\n") for _, d in many)
    assert b"".join(d for _, d in many) == b"yy" + b"abc\n" * 6


def test_order_across_streams_is_kept() -> None:
    c = OutputCoalescer()
    assert c.feed("stdout", b"working...", 0.0) == []
    assert c.feed("stderr", b"warning\n", 0.01) == [("stdout", b"working..."),
                                                    ("stderr", b"warning\n")]
    assert c.feed("stdout", b"done\n", 0.02) == [("stdout", b"done\n")]


def test_a_stream_closed_while_waiting_leaves_no_task_behind() -> None:
    """An Execute call that ends early (client gone) closes the stream while it waits for
    the job's next event; its queue getter must end with it, not outlive the loop."""
    async def main() -> set[asyncio.Task[Any]]:
        job: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        events: asyncio.Queue[Any] = asyncio.Queue()
        events.put_nowait(("stdout", b"hi\n", time.monotonic()))
        stream = sandbox_service._stream(job, events)
        first = await anext(stream)
        assert first.output.data == b"hi\n"
        waiting = asyncio.ensure_future(anext(stream))  # now blocked on the next event
        await asyncio.sleep(0.05)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await stream.aclose()
        await asyncio.sleep(0)  # let the cancelled getter finish
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(main()) == set()
