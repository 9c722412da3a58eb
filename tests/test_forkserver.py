"""The fork server: results come back; a raise, a timeout and a death become ChildError, with a
trace only for the raise (the benchmark treats the others as fatal)."""

from __future__ import annotations

import math
import os
import time

import pytest

from longseq.forkserver import ChildError, Server


@pytest.fixture(scope="module")
def server():
    s = Server([], quiet=True)
    yield s
    s.close()


def test_result_and_fresh_process(server):
    assert server.call(math.sqrt, 16.0) == 4.0
    assert server.call(os.getpid) != os.getpid()
    assert server.call(os.getpid) != server.call(os.getpid)  # a new child per job


@pytest.mark.parametrize(
    ("fn", "args", "timeout", "message", "traced"),
    [
        (math.sqrt, (-1.0,), 30, "ValueError: math domain error", True),
        (time.sleep, (30,), 1, "no result after 1 s", False),
        (os.abort, (), 30, "the process died (signal 6", False),
    ],
)
def test_failures(server, fn, args, timeout, message, traced):
    with pytest.raises(ChildError) as info:
        server.call(fn, *args, timeout=timeout)
    assert message in str(info.value)
    assert bool(info.value.trace) is traced
    assert server.call(math.sqrt, 4.0) == 2.0  # the server goes on
