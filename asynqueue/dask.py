"""
Dask workers: ``DaskWorker`` runs a TaskQueue's calls on a dask.distributed
cluster, so that the queue keeps its priorities, series, timeouts, error
policy and deferred iteration while the work runs on any number of hosts.

Needs the optional extra ``pip install 'asynqueue[dask]'`` (dask.distributed
is imported when a DaskWorker is made), and asynqueue installed on the Dask
workers too (they import ``asynqueue.daskside``).
"""
import asyncio
import inspect
import threading
import time
import uuid
import weakref
from collections import deque

from twisted.internet import defer, reactor
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from . import errors
from .interfaces import IWorker
from .iteration import BatchFetcher, Deferator
from .daskbatch import CallBatches, exceptionText
from .slots import Call, SlotsWorker, relayTo
from .workers import iterationResult, popWorkerOptions

__all__ = ["DaskWorker"]

#: Items of a remote iterator fetched per round trip, by default.
ITERATION_BATCH = 256
#: Seconds that closing the worker's own client may take.
CLOSE_TIMEOUT = 10.0
#: The name of each persistent update's worker plugin starts with this.
PLUGIN_PREFIX = "asynqueue-update-"
#: By default, the calls waiting on the cluster per worker thread, at
#: most: enough that a thread finds the next short call there instead of
#: waiting for the round trip to the queue and back...
BACKLOG_CALLS = 32
#: ...and about as many seconds of work per thread, at most, by how long
#: calls have taken so far: calls that take a while wait in the queue, where
#: its order and their timeouts are exact (see ``DaskWorker.backlog``).
BACKLOG_SECONDS = 0.05
#: Waiting calls go to the cluster once 1/REFILL_DIVISOR of the slots is
#: free, so that each hop to the loop thread and each graph sent to the
#: scheduler carries several calls while the cluster stays busy.
REFILL_DIVISOR = 4


def _importDistributed():
    """dask.distributed and our cluster-side module, or an ImportError
    that says how to install them."""
    try:
        import distributed

        from . import daskside
    except ImportError as error:
        raise ImportError(
            "DaskWorker needs dask.distributed ({}); install it with "
            "pip install 'asynqueue[dask]'".format(error)) from error
    return distributed, daskside


class _Call(Call):
    """A task on its way to the cluster."""

    __slots__ = ("priority", "future")

    def __init__(self, task, raw, consumer):
        Call.__init__(self, task, raw, consumer)
        self.priority = task.priority
        #: The Dask future, while the call runs (set on the loop thread).
        self.future = None


@implementer(IWorker)
class DaskWorker(CallBatches, SlotsWorker):
    """
    Runs tasks on a dask.distributed cluster: ``address_or_client`` is the
    scheduler's address (``"tcp://host:8786"``) or a ``distributed.Client``
    (whose scheduler and security settings are used).

    The worker talks to the scheduler through an asynchronous Client of its
    own, on an event loop in a thread of its own, so that the reactor never
    waits; a Client given to it is left as it is (and never closed).

    Up to ``capacity`` calls are on the cluster at once. By default, one
    per worker thread of the cluster (followed as workers come and go) plus
    a small backlog per thread (``backlog``): as many calls as take about
    50 ms there, by how long calls have taken so far, and 32 at most. Why:
    a call of a few milliseconds takes longer to travel from the queue to
    the scheduler and back than to run, and with no backlog each thread
    would idle through that round trip between two calls. Calls of 50 ms
    or more get no backlog. Either way the queue's priority order decides
    what goes next: each call goes to Dask with the priority the queue gave
    it, so Dask runs what waits on the cluster in that order too, and what
    waits there is at most about 50 ms of work per thread (time that counts
    towards those calls' timeouts). Calls go to the scheduler in batches,
    one graph each, and their results come back in batches too.

    A call that raises comes back as an error (status ``e``) with the
    remote traceback; an iterator comes back as a Deferator fetching
    ``iterationBatch`` items per round trip (``raw=True``: as it is, if it
    pickles). ``timeout`` and cancelling a call's Deferred cancel its Dask
    future (Dask cannot interrupt a running thread: the call finishes
    there, and its result is dropped). If the connection to the scheduler
    is lost, the calls on the cluster are handed back to the queue (status
    ``d``, retried once) and the worker resigns.

    Updates (``TaskQueue.update``) run on every Dask worker (``Client.run``)
    and, unless ephemeral, on each worker that joins later (a worker
    plugin); their result is a dict of Dask worker address to result.

    Arguments and results travel with Dask's own serialization (numpy arrays
    without extra copies). For a big argument used by many calls, scatter it
    once (``scatter()``) and pass the Dask future it gives in its place.
    """

    cQualified = ['dask', 'remote']
    callType = _Call

    def __init__(self, address_or_client, series=[], raw=False,
                 capacity=None, iterationBatch=ITERATION_BATCH):
        self._distributed, self._daskside = _importDistributed()
        for name, value in (("capacity", capacity),
                            ("iterationBatch", iterationBatch)):
            if value is not None and (not isinstance(value, int) or
                                      isinstance(value, bool) or value < 1):
                raise ValueError("{} must be a positive integer, not "
                                 "{!r}".format(name, value))
        address, security = self._schedulerOf(address_or_client)
        self.address = address
        self.iQualified = list(series)
        self.raw = raw
        self.capacity = capacity
        self.iterationBatch = iterationBatch
        self.client = None
        self._initSlots()
        self._clusterThreads = None
        #: Whether ``_flush`` is due at the end of this reactor turn.
        self._flushing = False
        #: (call, statusResult) of calls done on the loop thread, for the
        #: reactor (appended there, popped here).
        self._outcomes = deque()
        self._iterators = weakref.WeakSet()
        self._reason = None
        self._state = "connecting"
        self._connectWaiters = []
        self._dStopped = None
        self._dClosed = defer.Deferred()
        self._closing = False
        # Owned by the loop thread from here on.
        self._plugins = []
        self._refreshed = 0.0
        self._initBatches()
        self._loop = asyncio.new_event_loop()
        self._connection = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._runLoop, name="asynqueue DaskWorker loop",
            daemon=True)
        self._thread.start()
        self._onLoop(self._connect(address, security))

    def _schedulerOf(self, address_or_client):
        """The scheduler address and security of an address or Client."""
        if isinstance(address_or_client, self._distributed.Client):
            client = address_or_client
            if client.scheduler is None:
                raise ValueError(
                    "{!r} is not connected to a scheduler".format(client))
            return client.scheduler.address, client.security
        if not isinstance(address_or_client, str):
            raise TypeError(
                "DaskWorker needs a scheduler address (str) or a "
                "distributed.Client, not {!r}".format(address_or_client))
        return address_or_client, None

    def __repr__(self):
        return "<DaskWorker {} to {}>".format(
            getattr(self, "ID", "?"), self.address)

    # --- The loop thread ---------------------------------------------------

    def _runLoop(self):
        """The thread's life: run the event loop until stopped, then finish
        what is left on it and tell the reactor that the thread ends."""
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(
                asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(
                self._loop.shutdown_default_executor())
        finally:
            self._loop.close()
            reactor.callFromThread(self._threadEnded)

    def _threadEnded(self):
        self._thread.join()
        self._dClosed.callback(None)

    def _onLoop(self, coroutine):
        """Run ``coroutine`` on the loop; D→its result (failures too), fired
        in the reactor thread."""
        d = defer.Deferred()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:
            coroutine.close()
            return defer.fail(errors.WorkerError(
                "{!r} is closed".format(self)))

        def done(future):
            try:
                result = future.result()
            except BaseException as error:
                reactor.callFromThread(d.errback, Failure(error))
            else:
                reactor.callFromThread(d.callback, result)
        future.add_done_callback(done)
        return d

    async def _connect(self, address, security):
        """Open my client; tell the reactor how it went."""
        try:
            self.client = await self._distributed.Client(
                address, asynchronous=True, set_as_default=False,
                security=security)
            threads = await self._clusterThreadCount()
        except Exception as error:
            self._connection.set_exception(error)
            self._connection.exception()
            reactor.callFromThread(
                self._connectFailed, "Can't connect to the Dask scheduler "
                "at {}: {!r}".format(address, error))
            return
        self._connection.set_result(self.client)
        self._refreshed = time.monotonic()
        reactor.callFromThread(self._connected, threads)

    async def _clusterThreadCount(self):
        """The number of worker threads in the cluster now."""
        try:
            identity = await self.client.scheduler.identity(n_workers=0)
        except TypeError:
            # A scheduler older than 2025 lists every worker.
            identity = await self.client.scheduler.identity()
        if "total_threads" in identity:
            return identity["total_threads"]
        return sum(worker.get("nthreads", 0)
                   for worker in identity.get("workers", {}).values())

    async def _refreshCapacity(self):
        try:
            threads = await self._clusterThreadCount()
        except Exception:
            return
        reactor.callFromThread(self._setClusterThreads, threads)

    # --- Connection and capacity (reactor thread) -----------------------

    def whenConnected(self):
        """D→me once connected to the scheduler; fails with the reason if
        that cannot be."""
        if self._state == "ready":
            return defer.succeed(self)
        if self._reason is not None:
            return defer.fail(errors.WorkerError(self._reason))
        d = defer.Deferred()
        self._connectWaiters.append(d)
        return d

    def whenClosed(self):
        """D→None once my client is closed and my thread has ended."""
        d = defer.Deferred()
        self._dClosed.addBoth(relayTo, d)
        return d

    def _connected(self, threads):
        if self._state != "connecting":
            return
        self._state = "ready"
        self._setClusterThreads(threads)
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.callback(self)

    def _connectFailed(self, text):
        self._fail(text)

    def _setClusterThreads(self, threads):
        self._clusterThreads = threads
        self._progress()

    @property
    def slots(self):
        """How many calls I keep on the cluster at once: ``capacity``, or
        one per worker thread of the cluster plus a backlog per thread
        (``backlog``)."""
        if self.capacity:
            return self.capacity
        return self._threads * (1 + self.backlog)

    @property
    def _threads(self):
        """The cluster's worker threads (at least 1)."""
        return max(1, self._clusterThreads or 1)

    @property
    def backlog(self):
        """Calls waiting on the cluster per worker thread, by default:
        about ``BACKLOG_SECONDS`` of work by how long calls have taken so
        far, up to ``BACKLOG_CALLS`` (none until a call has come back)."""
        seconds = self._callSeconds
        if seconds is None:
            return 0
        if seconds * BACKLOG_CALLS <= BACKLOG_SECONDS:
            return BACKLOG_CALLS
        return int(BACKLOG_SECONDS / seconds)

    taskLimit = slots

    def _fail(self, text):
        """I cannot work (no connection): say why, fail whoever waits for
        the connection, and resign."""
        if self._state in ("failed", "lost", "stopped"):
            return
        self._reason = text
        log.msg("{!r} cannot work: {}".format(self, text))
        self._state = "failed"
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.errback(Failure(errors.WorkerError(text)))
        self._resign()
        self._progress()

    def _lost(self, text):
        """The connection to the scheduler is gone: resign (the calls not yet
        sent go back to the queue as they are) and hand the calls that were
        on the cluster back with status ``d``."""
        if self._state != "ready":
            return
        self._state = "lost"
        self._reason = text
        log.msg("{!r} lost the scheduler: {}".format(self, text))
        lostCalls, self._inFlight = self._inFlight, []
        for call in lostCalls:
            if call.task in self.tasks:
                self.tasks.remove(call.task)
        self._resign()
        for call in lostCalls:
            if not call.abandoned:
                call.abandoned = True
                call.task.callback((b'd', "Lost the Dask scheduler at {} "
                                    "while running {!r}: {}".format(
                                        self.address, call.task, text)))
        self._progress()

    # --- IWorker -------------------------------------------------------

    def run(self, task):
        """Send ``task`` to the cluster when a slot is free; fires when I
        can take another (an update: once it is done everywhere)."""
        mode = getattr(task, "updateMode", None)
        if mode is not None:
            popWorkerOptions(task, self.raw)
            return self._update(task, mode == "persistent")
        return self._admit(task)

    def _pump(self):
        """Send waiting calls while slots are free, at the end of this
        reactor turn: all that can go then, in one hop to the loop
        thread."""
        if self._state == "ready" and self._waiting and not self._flushing:
            self._flushing = True
            reactor.callLater(0, self._flush)

    def _flush(self):
        """Send the waiting calls that fit, unless the cluster is busy and
        fewer than 1/REFILL_DIVISOR of the slots are free (then wait, to
        send more at once)."""
        self._flushing = False
        if self._state != "ready" or not self._waiting:
            return
        if self.client.status != "running":
            return self._lost("the client is {}".format(self.client.status))
        slots, held = self.slots, len(self._inFlight)
        room = slots - held
        if room <= 0 or room < slots // REFILL_DIVISOR and \
                held >= self._threads:
            return
        calls = []
        while self._waiting and len(calls) < room:
            call = self._waiting.popleft()
            self._inFlight.append(call)
            calls.append(call)
        try:
            self._loop.call_soon_threadsafe(self._submitAll, calls)
        except RuntimeError:
            pass

    def _progress(self):
        """Something finished or the limit changed: send what can go, let
        waiting requests through, and see whether I have stopped."""
        self._pump()
        self._wakeReady(self._state not in ("connecting", "ready"))
        self._checkStopped()

    # --- Outcomes (reactor thread) ---------------------------------------

    def _deliverOutcomes(self):
        """Report the outcomes the loop thread has collected since the last
        time (one hop to the reactor for a batch of calls), then send more
        calls."""
        while self._outcomes:
            self._finished(*self._outcomes.popleft())
        self._progress()

    def _finished(self, call, statusResult):
        """Report a call's outcome (unless abandoned) and free its slot."""
        if self._settle(call):
            status, result = statusResult
            if status == b'i':
                statusResult = self._iteration(call, result)
            call.task.callback(statusResult)

    def _iteration(self, call, held):
        """An iterator result: a Deferator (or an IterationProducer with a
        consumer) over its items, or ``[]`` if it was empty."""
        address, ID, items, more = held
        if not items and not more:
            return b'i', []
        remote = RemoteIterator(self, address, ID, items, more)
        self._iterators.add(remote)
        return iterationResult(remote.deferator(), call.consumer)

    def fetch(self, remote):
        """D→``(items, moreLeft)``: the next batch of a remote iterator."""
        return self._onLoop(self._fetch(remote.address, remote.ID))

    async def _fetch(self, address, ID):
        replies = await self.client.run(
            self._daskside.nextBatch, ID, self.iterationBatch,
            workers=[address])
        if address not in replies:
            raise errors.WorkerError(
                "The Dask worker {} holding the iterator is gone".format(
                    address))
        return replies[address]

    def drop(self, remote):
        """Have the Dask worker forget a remote iterator (fire and forget)."""
        if self._closing or self.client is None:
            return
        d = self._onLoop(self._dropIterator(remote.address, remote.ID))
        d.addErrback(lambda failure: None)

    async def _dropIterator(self, address, ID):
        await self.client.run(self._daskside.dropIterator, ID,
                              workers=[address], on_error="ignore")

    def cancelTask(self, task):
        """Abandon ``task`` (timed out or cancelled): it leaves the queue of
        calls not yet sent, or its Dask future is cancelled."""
        call, waiting = self._abandonCall(task)
        if call is None:
            return
        if not waiting:
            self._inFlight.remove(call)
            self._loop.call_soon_threadsafe(self._cancelFuture, call)
        self._progress()

    # --- Updates ---------------------------------------------------------

    def _update(self, task, persistent):
        """Run an update task on every Dask worker (and, if persistent, on
        workers that join later). D→None once its outcome is delivered."""
        f, args, kw = task.callTuple
        updateID = uuid.uuid4().hex if persistent else None
        d = self._onLoop(self._applyUpdate(updateID, f, args, kw))
        d.addCallbacks(_updateOutcome, _updateFailed,
                       errbackArgs=(task, self.address))
        d.addCallback(task.callback)
        return d

    async def _applyUpdate(self, updateID, f, args, kw):
        client = await asyncio.shield(self._connection)
        outcomes = await client.run(
            self._daskside.applyUpdate, updateID, f, args, kw,
            on_error="return")
        if updateID is not None:
            name = PLUGIN_PREFIX + updateID
            await client.register_plugin(
                self._daskside.UpdatePlugin(updateID, f, args, kw),
                name=name)
            self._plugins.append(name)
        return outcomes

    # --- Scattering ------------------------------------------------------

    def scatter(self, data, broadcast=False):
        """
        D→a Dask Future holding ``data`` on the cluster (for a list or dict:
        a list or dict of them, as ``Client.scatter`` does). Pass it to calls
        in place of ``data``: Dask hands the calls the data itself, sent to
        each Dask worker once instead of with every call. ``broadcast=True``
        copies it to every worker at once.
        """
        return self._onLoop(self._scatter(data, broadcast))

    async def _scatter(self, data, broadcast):
        client = await asyncio.shield(self._connection)
        return await client.scatter(data, broadcast=broadcast, hash=False)

    # --- Ending ----------------------------------------------------------

    def stop(self):
        """Fires once every task handed to me is done, my client is closed
        and my thread has ended."""
        if self._dStopped is None:
            self._dStopped = defer.Deferred()
            self._dClosed.addBoth(relayTo, self._dStopped)
            self._checkStopped()
        d = defer.Deferred()
        self._dStopped.addBoth(relayTo, d)
        return d

    def _checkStopped(self):
        """Once stopping and holding no call I can still run, close."""
        if self._dStopped is None or self._closing:
            return
        if self._state in ("connecting", "ready") and self._held():
            return
        self._close()

    def _close(self):
        """Stop taking calls; close my client and end my thread."""
        if self._closing:
            return
        self._closing = True
        if self._state in ("connecting", "ready"):
            self._state = "stopped"
        self._wakeReady(everyone=True)
        iterators = [(remote.address, remote.ID)
                     for remote in self._iterators if remote.more]
        try:
            asyncio.run_coroutine_threadsafe(
                self._shutdown(iterators), self._loop)
        except RuntimeError:
            pass

    async def _shutdown(self, iterators):
        """Drop the iterators held for me and unregister my update plugins
        (if still connected), close my client, and stop the loop."""
        try:
            if self._connection.done() and not \
                    self._connection.exception():
                await asyncio.wait_for(
                    self._closeClient(iterators), CLOSE_TIMEOUT)
            elif not self._connection.done():
                self._connection.cancel()
        except Exception as error:
            log.msg("{!r}: closing the Dask client: {!r}".format(
                self, error))
        finally:
            self._loop.stop()

    async def _closeClient(self, iterators):
        client = self.client
        try:
            if client.status == "running":
                await self._forget(client, iterators)
        except Exception as error:
            log.msg("{!r}: cleaning up on the Dask cluster: {!r}".format(
                self, error))
        closing = client.close()
        if inspect.isawaitable(closing):
            await closing

    async def _forget(self, client, iterators):
        """Have the Dask workers drop ``iterators`` and my update plugins."""
        for address, ID in iterators:
            await self._dropIterator(address, ID)
        for name in self._plugins:
            await client.unregister_worker_plugin(name)

    def crash(self):
        """Close the connection now; return the unfinished tasks."""
        unfinished = self._abandonAll()
        self._close()
        return unfinished


class RemoteIterator(BatchFetcher):
    """The handle on an iterator a Dask worker holds for a DaskWorker:
    fetches its items in batches and has the worker drop it when its
    Deferator is stopped or dropped."""

    def __init__(self, worker, address, ID, items, more):
        BatchFetcher.__init__(self)
        self.worker = worker
        self.address = address
        self.ID = ID
        self.storeBatch((items, more))

    def fetchBatch(self):
        return self.worker.fetch(self)

    def deferator(self):
        dr = Deferator("Dask iterator {} on {}".format(
            self.ID, self.address), self.getNext)
        dr.d.addBoth(self.drop)
        weakref.finalize(dr, reactor.callFromThread, self.drop)
        return dr

    def drop(self, result=None):
        """Have the Dask worker forget the iterator, if it has items left;
        as a callback, pass ``result`` on."""
        if self.more:
            self.more = False
            self.items.clear()
            self.worker.drop(self)
        return result


def _updateOutcome(outcomes):
    """The ``(status, result)`` of an update from each Dask worker's
    outcome: ``b'r'`` with a dict of address to result, or ``b'e'`` naming
    the workers where it failed and why."""
    results, failures = {}, []
    for address, outcome in sorted(outcomes.items()):
        if isinstance(outcome, BaseException):
            failures.append("{}: {}".format(address, exceptionText(outcome)))
            continue
        status, result = outcome
        if status == b'e':
            failures.append("{}: {}".format(address, result))
        else:
            results[address] = result
    if failures:
        return b'e', "The update failed on Dask workers:\n" + "\n".join(
            failures)
    return b'r', results


def _updateFailed(failure, task, address):
    return b'e', "Can't run update {!r} on the Dask cluster at {}: {}".format(
        task, address, failure.getErrorMessage())
