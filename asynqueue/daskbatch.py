"""
DaskWorker's calls on its loop thread: each batch of calls goes to the
scheduler as one graph, a future per call is watched, and the results of
calls that finish meanwhile are fetched with one request and handed to the
reactor in one hop, so that a busy cluster costs a few messages per batch
rather than per call.
"""
import asyncio
import time
import uuid
from itertools import count

from twisted.internet import reactor

__all__ = ["CallBatches", "exceptionText"]

#: Seconds, at least, between two looks at the cluster's thread count while
#: calls complete (only when ``capacity`` is not given).
CAPACITY_REFRESH = 1.0
#: How fast that estimate of a call's seconds follows new calls.
SECONDS_WEIGHT = 0.25
#: Results are fetched once the finished calls number 1/FETCH_DIVISOR of
#: those still running, or none is left running, or the first of them has
#: waited FETCH_DELAY seconds: one request brings many results.
FETCH_DIVISOR = 4
FETCH_DELAY = 0.01


def _graphMakers():
    """``(Task, parseInput, LLGExpr)``: what ``Client.submit`` builds its
    one-task graph with, which lets a batch of calls go to the scheduler as
    one graph; None with a Dask too old to have them (each call then goes
    by itself, through ``Client.submit``)."""
    try:
        from dask._expr import LLGExpr
        from dask._task_spec import Task, parse_input
    except ImportError:
        return None
    return Task, parse_input, LLGExpr


def exceptionText(error):
    """An exception that Dask raised, with its traceback, as text."""
    import traceback
    return "".join(traceback.format_exception(
        type(error), error, error.__traceback__))


class CallBatches:
    """
    The part of DaskWorker that runs on its loop thread while calls are on
    the cluster (a mixin: the worker provides ``client``, ``address``,
    ``capacity``, ``iterationBatch``, ``_loop``, ``_distributed``,
    ``_daskside``, ``_outcomes``, ``_lost``, ``_deliverOutcomes`` and
    ``_refreshCapacity``).
    """

    def _initBatches(self):
        """The state of the batches, set up before the loop starts."""
        #: About how many seconds a call takes on the cluster (a moving
        #: average; set on the loop thread, read on the reactor's).
        self._callSeconds = None
        self._graphs = _graphMakers()
        #: Dask keys are my prefix and a serial number: unique without a
        #: uuid (an os.urandom call) for each call.
        self._keyPrefix = uuid.uuid4().hex
        self._serials = count(1)
        #: Calls whose Dask future is done, gathered together once the
        #: loop is through with what woke it.
        self._done = []
        #: Finished calls whose results are to be fetched, and whether a
        #: request for results is on its way.
        self._ready = []
        self._fetching = False
        self._fetchTimer = None
        #: Calls on the cluster that have not finished yet.
        self._running = 0

    def _submitAll(self, calls):
        """Send a batch of calls to the scheduler, as one graph if it can
        go as one (else call by call), and watch their futures."""
        calls = [call for call in calls if not call.abandoned]
        if not calls:
            return
        futures = None
        if self._graphs is not None:
            try:
                futures = self._submitGraph(calls)
            except Exception:
                # Say, an argument that cannot be serialized: one by one,
                # so that only its own call fails.
                futures = None
        for i, call in enumerate(calls):
            if futures is not None:
                call.future = futures[i]
            else:
                try:
                    call.future = self._submitOne(call)
                except Exception as error:
                    self._failed(call, error)
                    continue
            self._running += 1
            self._loop.create_task(self._watch(call))

    def _key(self, f):
        """A new Dask key, named after the function called."""
        name = getattr(f, "__name__", None) or type(f).__name__
        return "{}-{}-{}".format(name, self._keyPrefix, next(self._serials))

    def _submitOne(self, call):
        f, args, kw = call.task.callTuple
        return self.client.submit(
            self._daskside.runTask, f, args, kw, call.raw,
            self.iterationBatch, key=self._key(f), pure=False,
            priority=-call.priority)

    def _submitGraph(self, calls):
        """Submit calls as one graph: one message to the scheduler and one
        graph update there for all of them (``Client.submit`` makes one of
        each per call). Each task keeps its own priority (a callable
        priority is applied key by key); the Dask futures, in order."""
        Task, parseInput, LLGExpr = self._graphs
        runTask, batch = self._daskside.runTask, self.iterationBatch
        graph, keys, priorities = {}, [], {}
        for call in calls:
            f, args, kw = call.task.callTuple
            key = self._key(f)
            graph[key] = Task(key, runTask, parseInput(f), parseInput(args),
                              parseInput(kw), call.raw, batch)
            keys.append(key)
            priorities[key] = -call.priority
        # A token of our own, as Client.submit does: the default one would
        # hash every argument.
        expr = LLGExpr(graph, _determ_token=self._key(LLGExpr))
        return self.client.get(
            expr, keys, sync=False, priority=priorities.get,
            fifo_timeout="100 ms")

    async def _watch(self, call):
        """Wait for a call's future to finish, then have it collected."""
        await call.future._state.wait()
        self._done.append(call)
        if len(self._done) == 1:
            self._loop.call_soon(self._collect)

    def _collect(self):
        """See to the calls finished since the last time: the results of
        those that ran go to be fetched, the others (errors, most likely)
        are seen to one by one."""
        calls, self._done = self._done, []
        self._running -= len(calls)
        for call in calls:
            if call.abandoned:
                call.future = None
            elif call.future.status == "finished":
                self._ready.append(call)
            else:
                self._loop.create_task(self._fetchOne(call))
        self._maybeFetch()
        if self.capacity is None and \
                time.monotonic() - self._refreshed > CAPACITY_REFRESH:
            self._refreshed = time.monotonic()
            self._loop.create_task(self._refreshCapacity())

    def _maybeFetch(self, now=False):
        """Fetch the finished calls' results, one request at a time, once
        enough of them are waiting (or nothing else runs, or the first
        waited ``FETCH_DELAY``): a busy cluster costs few requests."""
        if self._fetching or not self._ready:
            return
        if now or self._running <= 0 or \
                len(self._ready) * FETCH_DIVISOR >= self._running:
            if self._fetchTimer is not None:
                self._fetchTimer.cancel()
                self._fetchTimer = None
            self._fetching = True
            self._loop.create_task(self._fetchAll())
        elif self._fetchTimer is None:
            self._fetchTimer = self._loop.call_later(
                FETCH_DELAY, self._fetchLate)

    def _fetchLate(self):
        self._fetchTimer = None
        self._maybeFetch(now=True)

    async def _fetchAll(self):
        """Fetch the results of finished calls and report them."""
        calls, self._ready = self._ready, []
        try:
            results = await self.client.gather(
                {i: call.future for i, call in enumerate(calls)},
                errors="skip")
        except Exception:
            # A result that cannot be fetched, or the connection gone:
            # each call finds out for itself.
            results = {}
        finally:
            self._fetching = False
        reports = []
        for i, call in enumerate(calls):
            statusResult = results.get(i)
            if statusResult is None:
                self._loop.create_task(self._fetchOne(call))
            else:
                call.future = None
                reports.append((call, self._ran(statusResult)))
        self._report(*reports)
        self._maybeFetch()

    async def _fetchOne(self, call):
        """Fetch the outcome of one call (an error, most likely) and
        report it."""
        try:
            statusResult = await self.client.gather(call.future)
        except Exception as error:
            return self._failed(call, error)
        finally:
            call.future = None
        self._report((call, self._ran(statusResult)))

    def _ran(self, reply):
        """The ``(status, result)`` of a ``runTask`` reply; its seconds
        go into the estimate of how long calls take."""
        if len(reply) == 3:
            estimate, seconds = self._callSeconds, reply[2]
            self._callSeconds = seconds if estimate is None else \
                estimate + SECONDS_WEIGHT * (seconds - estimate)
        return reply[0], reply[1]

    def _failed(self, call, error):
        """Dask could not run or finish a call: an error, or the scheduler
        is lost."""
        lost = self.client.status != "running" or getattr(
            error, "reason", None) == "scheduler-connection-lost"
        text = self._errorText(call, error)
        if lost:
            reactor.callFromThread(self._lost, text)
        else:
            self._report((call, (b'e', text)))

    def _report(self, *outcomes):
        """Hand ``(call, statusResult)`` outcomes to the reactor: one hop
        for all those that gather before it looks."""
        hop = False
        for outcome in outcomes:
            self._outcomes.append(outcome)
            # Length 1: the reactor has taken all the others (or is
            # taking them), and may miss this one.
            hop = hop or len(self._outcomes) == 1
        if hop:
            reactor.callFromThread(self._deliverOutcomes)

    def _errorText(self, call, error):
        """What to say of a call that Dask could not run or finish."""
        if isinstance(error, self._distributed.client.CancelledError):
            return "{!r} was cancelled on the Dask cluster at {}: {}".format(
                call.task, self.address, error)
        return "{!r} failed on the Dask cluster at {}: {}".format(
            call.task, self.address, exceptionText(error))

    def _cancelFuture(self, call):
        """Cancel the Dask future of an abandoned call, if it has one."""
        if call.future is not None and self.client.status == "running":
            asyncio.ensure_future(self.client.cancel(
                call.future, reason="cancelled by asynqueue"))
