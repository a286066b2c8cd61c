"""
A first look at asynqueue: a TaskQueue runs calls in priority order and
hands back Deferreds. Run it with ``python examples/quickstart.py``.
"""
from twisted.internet import defer, task

from asynqueue import AsyncWorker, TaskQueue


@defer.inlineCallbacks
def main(reactor):
    queue = TaskQueue(AsyncWorker(), returnFailure=True)
    ran = []

    def work(name):
        ran.append(name)
        return name.upper()

    # The worker is busy for a moment, so the next calls wait in the queue,
    # where a lower niceness goes sooner and doNext jumps ahead of all.
    busy = queue.call(task.deferLater, reactor, 0.1, work, "busy")
    calls = [
        queue.call(work, "relaxed", niceness=10),
        queue.call(work, "normal"),
        queue.call(work, "urgent", doNext=True),
    ]
    results = yield defer.gatherResults([busy] + calls)
    print("results:", results)
    print("ran in this order:", ", ".join(ran))
    try:
        yield queue.call(divmod, 1, 0)
    except Exception as error:
        print("a failed call errbacks with", type(error).__name__)
    yield queue.shutdown()


if __name__ == "__main__":
    task.react(main)
