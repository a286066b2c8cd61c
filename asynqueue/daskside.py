"""
The cluster side of ``asynqueue.dask``: the functions a DaskWorker has its
Dask workers run (each call, batches of the iterators calls return, and
update tasks) and the worker plugin that replays updates on workers that
join later.

It imports no Twisted, so Dask workers need only asynqueue itself, Dask and
what the calls import.
"""
import asyncio
import threading
from itertools import count
from time import perf_counter

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from .child import _Lookahead, callText, errorText, isIterator

__all__ = [
    "runTask", "nextBatch", "dropIterator", "applyUpdate", "UpdatePlugin",
]

#: Iterators held for DaskWorkers, by ID, in this Dask worker process.
_held = {}
#: The IDs of the persistent updates already applied in this process.
_applied = set()
_lock = threading.Lock()
_iteratorIDs = count(1)


def _call(f, args, kw):
    """``(b'r', f(*args, **kw))``, or ``(b'e', text)`` if it raised."""
    try:
        return b'r', f(*args, **kw)
    except Exception:
        return b'e', errorText(callText(f, args, kw))


def runTask(f, args, kw, raw, batchSize):
    """
    Run one call of a DaskWorker in a Dask worker thread. Returns
    ``(status, result, seconds)``: ``b'r'`` with the result, ``b'e'`` with
    the text of the exception and its traceback, or ``b'i'`` for an
    iterator (unless ``raw``) with ``(address, ID, firstItems, moreLeft)``,
    the iterator held here for ``nextBatch`` while more items are left;
    and the seconds that took (the DaskWorker sizes its backlog by them).
    """
    started = perf_counter()
    status, result = _runTask(f, args, kw, raw, batchSize)
    return status, result, perf_counter() - started


def _runTask(f, args, kw, raw, batchSize):
    status, result = _call(f, args, kw)
    if status == b'e' or raw or not isIterator(result):
        return status, result
    try:
        held = _Lookahead(result)
        items, more = held.batch(batchSize)
    except Exception:
        return b'e', errorText("the first next() of " + callText(f, args, kw))
    if not more:
        return b'i', (None, None, items, False)
    with _lock:
        ID = next(_iteratorIDs)
        _held[ID] = held
    return b'i', (get_worker().address, ID, items, True)


async def nextBatch(ID, size):
    """``(items, moreLeft)``: the next batch of held iterator ``ID``, made
    in a thread of the worker's event loop (run through ``Client.run``,
    so that no task thread is taken and the event loop is never held)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _batch, ID, size)


def _batch(ID, size):
    with _lock:
        held = _held.get(ID)
    if held is None:
        return [], False
    items, more = held.batch(size)
    if not more:
        dropIterator(ID)
    return items, more


def dropIterator(ID):
    """Forget held iterator ``ID`` (its DaskWorker wants no more items)."""
    with _lock:
        _held.pop(ID, None)


def applyUpdate(updateID, f, args, kw):
    """
    Run update call ``f(*args, **kw)`` in this Dask worker process, once per
    ``updateID`` (None: always). Returns ``(status, result)``; ``(b'n',
    None)`` if this process had already applied it.
    """
    if updateID is not None:
        with _lock:
            if updateID in _applied:
                return b'n', None
            _applied.add(updateID)
    return _call(f, args, kw)


class UpdatePlugin(WorkerPlugin):
    """Applies a persistent update on every Dask worker that starts (or
    is running) while the plugin is registered; errors are printed in the
    worker's log."""

    def __init__(self, updateID, f, args, kw):
        self.updateID = updateID
        self.callTuple = (f, args, kw)

    def setup(self, worker):
        status, result = applyUpdate(self.updateID, *self.callTuple)
        if status == b'e':
            import logging
            logging.getLogger("asynqueue").error(
                "Update on Dask worker %s failed: %s", worker.address, result)
