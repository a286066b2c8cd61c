"""
The compiled core against its pure-Python twin, on the work each does per
call: the scheduler's heap and the pipe framing.
"""
import random

import pytest

from asynqueue._speedups import compiledTwin
from asynqueue._speedups.pure import framing as pureFraming
from asynqueue._speedups.pure import scheduler as pureScheduler


TWINS = [("pure", pureScheduler, pureFraming)]
if compiledTwin("scheduler") and compiledTwin("framing"):
    TWINS.insert(0, ("asynqueue", compiledTwin("scheduler"),
                     compiledTwin("framing")))


def heapWork(scheduler, count):
    heap = scheduler.PriorityHeap()
    for priority in random.Random(1).sample(range(count), count):
        heap.push(priority, float(priority))
    while heap:
        heap.pop()


def framingWork(framing, count):
    writer = framing.FrameWriter()
    for i in range(count):
        writer.write(1, i, (i, None))
    data = writer.take()
    reader = framing.FrameReader()
    for start in range(0, len(data), 4096):
        reader.feed(data[start:start + 4096])
    while reader.next() is not None:
        pass


@pytest.mark.benchmark(group="scheduler: push and pop")
@pytest.mark.parametrize("name, scheduler, framing", TWINS,
                         ids=[t[0] for t in TWINS])
def test_heap(benchmark, record, quick, name, scheduler, framing):
    count = 1000 if quick else 100000
    record(lambda: heapWork(scheduler, count), name)


@pytest.mark.benchmark(group="framing: write and read")
@pytest.mark.parametrize("name, scheduler, framing", TWINS,
                         ids=[t[0] for t in TWINS])
def test_framing(benchmark, record, quick, name, scheduler, framing):
    count = 1000 if quick else 100000
    record(lambda: framingWork(framing, count), name)
