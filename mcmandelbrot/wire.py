"""
Remote rendering over asynqueue.wire: a server renders PNGs on all of its
cores (``MandelbrotWorkerUniverse``, started with ``python -m
mcmandelbrot.wire``) and a ``RemoteRunner`` here streams them back, so
``mcm -d tcp:host:1978 ...`` gives the same bytes as a local render.

    python -m mcmandelbrot.wire --port 1978      # on the server
    mcm -d tcp:server:1978 -o detail.png 3000 -0.73249 +0.21653 0.01
"""
import argparse
import itertools
import sys

from twisted.internet import defer, reactor

from asynqueue.base import TaskQueue
from asynqueue.wire import (
    ServerManager, WireWorker, WireWorkerUniverse, runServer)

from .runner import Runner

__all__ = ["MandelbrotWorkerUniverse", "RemoteRunner", "Writable", "server",
           "main", "PORT", "FQN"]

PORT = 1978
INTERFACE = None
DESCRIPTION = None
VERBOSE = True
FQN = "mcmandelbrot.wire.MandelbrotWorkerUniverse"


class Writable:
    """
    Where a server-side render writes its PNG: bytes accumulate until the
    client asks, and ``getNext`` hands over all that has come since its
    last call, waiting (without polling) while nothing has.
    """

    def __init__(self):
        self.data = []
        self.closed = False
        self._waiting = None

    def write(self, data):
        self.data.append(bytes(data))
        self._wake()

    def close(self):
        self.closed = True
        self._wake()

    def _wake(self):
        d, self._waiting = self._waiting, None
        if d is not None and not d.called:
            d.callback(self._take())

    def _take(self):
        """The bytes written so far (None once closed and empty)."""
        if not self.data:
            return None
        chunk = b"".join(self.data)
        del self.data[:]
        return chunk

    def getNext(self):
        """D→the bytes written since the last call; None at the end. A
        wait that is cancelled (its client gave up) takes nothing: the
        bytes go to the next call."""
        if self.data or self.closed:
            return defer.succeed(self._take())
        if self._waiting is None or self._waiting.called:
            self._waiting = defer.Deferred()
        return self._waiting


class _Run:
    """A render in progress on the server."""

    def __init__(self):
        self.fh = Writable()
        self.dCancel = defer.Deferred()
        self.rows = self.height = 0
        self.dRun = None

    def progress(self, rows, height):
        self.rows, self.height = rows, height


class MandelbrotWorkerUniverse(WireWorkerUniverse):
    """
    The server side: ``setup`` makes a Runner, ``run`` starts a render and
    names it, ``getNext`` (0.9) or ``nextChunk`` streams its PNG, ``done``
    gives its ``(seconds, pixels)``, ``cancel`` stops it.
    """

    def __init__(self, wireServer=None):
        super().__init__(wireServer)
        self.runner = None
        self.settings = None
        self.pendingRuns = {}
        self._IDs = itertools.count(1)
        self._triggerID = None

    def setup(self, N_values, steepness=3, workers=None):
        """Render with these settings from now on (a new Runner only if
        they changed). D→None."""
        settings = (N_values, steepness, workers)
        if settings == self.settings:
            return defer.succeed(None)
        d = self.shutdown() if self.runner else defer.succeed(None)
        self.runner = Runner(N_values, steepness=steepness, workers=workers,
                             verbose=VERBOSE)
        self.settings = settings
        if self._triggerID is None:
            self._triggerID = reactor.addSystemEventTrigger(
                "before", "shutdown", self.shutdown)
        return d

    def run(self, Nx, cr, ci, crPM, ciPM, requester=None):
        """Start a render; its ID (a str)."""
        if self.runner is None:
            raise RuntimeError("call setup(N_values, steepness) first")
        ID = str(next(self._IDs))
        run = self.pendingRuns[ID] = _Run()
        run.dRun = self.runner.run(
            run.fh, Nx, cr, ci, crPM, ciPM, dCancel=run.dCancel,
            requester=requester, progress=run.progress)
        run.dRun.addBoth(lambda result: run.fh.close() or result)
        return ID

    def getNext(self, ID):
        """D→the PNG bytes of run ``ID`` written since the last call, None
        at its end (or for an unknown run)."""
        run = self.pendingRuns.get(ID)
        return run.fh.getNext() if run else None

    def nextChunk(self, ID):
        """D→``(bytes or None, rowsDone, rows)``: ``getNext`` with the
        render's progress."""
        run = self.pendingRuns.get(ID)
        if run is None:
            return None
        d = run.fh.getNext()
        return d.addCallback(lambda data: (data, run.rows, run.height))

    def done(self, ID):
        """D→``(seconds, pixels)`` of run ``ID``, which is forgotten."""
        run = self.pendingRuns.pop(ID, None)
        return run.dRun if run else None

    def cancel(self, ID):
        """Stop run ``ID``."""
        run = self.pendingRuns.get(ID)
        if run is not None and not run.dCancel.called:
            run.dCancel.callback(None)

    def shutdown(self):
        """Cancel every run, then shut the Runner down."""
        runner, self.runner, self.settings = self.runner, None, None
        for ID in list(self.pendingRuns):
            self.cancel(ID)
        self.pendingRuns.clear()
        if runner is None:
            return defer.succeed(None)
        return runner.shutdown()


class RemoteRunner:
    """
    Renders on a remote MandelbrotWorkerUniverse (at ``description``, or
    on a server spawned on this host when it is None) with 0.9's Runner
    API. ``q`` is a TaskQueue of mine unless given; ``key``/``keyFile``
    authenticate to the server (else ASYNQUEUE_WIRE_KEY[FILE]).
    """

    setupDefaults = {"N_values": 3000, "steepness": 3}

    def __init__(self, description=None, q=None, key=None, keyFile=None):
        self.description = description
        self.ownQueue = q is None
        self.q = TaskQueue(returnFailure=True) if q is None else q
        self.key, self.keyFile = key, keyFile
        self.mgr = None
        self.worker = None
        self.settings = None

    @defer.inlineCallbacks
    def setup(self, **kw):
        """Connect (once) and set the server up with ``N_values`` and
        ``steepness`` (0.9's defaults), again only if they change."""
        settings = dict(self.setupDefaults)
        settings.update({k: v for k, v in kw.items()
                         if k in settings and v is not None})
        if self.worker is None:
            yield self._connect(kw.get("worker"))
        if settings != self.settings:
            yield self.q.call("setup", settings["N_values"],
                              settings["steepness"], series="mcm")
            self.settings = settings

    @defer.inlineCallbacks
    def _connect(self, worker):
        """Attach the worker (spawning a local server if need be)."""
        if worker is None:
            description = self.description
            if description is None:
                self.mgr = ServerManager(FQN, key=self.key,
                                         keyFile=self.keyFile)
                description = self.mgr.newSocket()
                yield self.mgr.spawn(description)
            worker = WireWorker(
                MandelbrotWorkerUniverse(), description, series=["mcm"],
                N_concurrent=2, key=self.key, keyFile=self.keyFile)
            yield worker.whenConnected()
            worker.whenClosed().addCallback(self._workerClosed)
        self.worker = worker
        yield self.q.attachWorker(worker)

    def _workerClosed(self, _):
        """My server went away: end my own queue, so that the calls
        waiting for it fail instead of waiting for ever."""
        if self.ownQueue:
            self.q.shutdown()

    @defer.inlineCallbacks
    def run(self, fh, Nx, cr, ci, crPM, ciPM, dCancel=None, requester=None,
            progress=None):
        """Render remotely, writing the PNG to ``fh`` as it arrives;
        D→``(seconds, pixels)``. ``progress`` as Runner.run's."""
        if self.settings is None:
            yield self.setup()
        ID = yield self.q.call("run", Nx, cr, ci, crPM, ciPM, requester,
                               series="mcm")
        if dCancel is not None:
            dCancel.addCallback(lambda _: self.q.call(
                "cancel", ID, niceness=-15, series="mcm"))
        while True:
            data, rows, height = yield self.q.call(
                "nextChunk", ID, series="mcm")
            if data is None:
                break
            fh.write(data)
            if progress is not None and height:
                progress(rows, height)
        result = yield self.q.call("done", ID, series="mcm")
        return tuple(result)

    @defer.inlineCallbacks
    def writeImage(self, fileName, *args, **kw):
        """Render into the file ``fileName``; D→``(seconds, pixels)``."""
        yield self.setup(N_values=kw.pop("N_values", None),
                         steepness=kw.pop("steepness", None))
        with open(fileName, "wb") as fh:
            result = yield self.run(fh, *args, **kw)
        return result

    def showStats(self, runInfo):
        """Print how long the server took."""
        seconds, N = runInfo
        print("Remote server computed {:d} pixels in {:1.1f} seconds.".format(
            N, seconds))

    @defer.inlineCallbacks
    def shutdown(self):
        """Shut my queue down (if mine) and end a server I spawned."""
        if self.ownQueue:
            yield self.q.shutdown()
        elif self.worker is not None:
            yield self.q.detachWorker(self.worker)
        if self.mgr is not None:
            yield self.mgr.shutdown()


def server(description=None, port=PORT, interface=INTERFACE, key=None,
           keyFile=None):
    """Serve renders at ``description`` (default ``tcp:PORT`` on
    ``interface``, loopback unless given) until stopped; the exit
    status."""
    if description is None:
        description = "tcp:{:d}:interface={}".format(
            port, interface or "127.0.0.1")
    return runServer(description, FQN, key=key, keyFile=keyFile)


def main(args=None):
    """``python -m mcmandelbrot.wire [--port 1978] [--interface ADDRESS]
    [--key-file PATH] [DESCRIPTION]``."""
    p = argparse.ArgumentParser(
        prog="python -m mcmandelbrot.wire",
        description="Serve Mandelbrot renders to `mcm -d DESCRIPTION`.")
    p.add_argument("description", nargs="?", default=None,
                   help="Twisted endpoint, e.g. unix:/tmp/mcm.sock "
                   "(default: tcp on --port and --interface)")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--interface", default=INTERFACE,
                   help="default 127.0.0.1; another needs a key")
    p.add_argument("--key-file", default=None,
                   help="file holding the shared key (or set "
                   "ASYNQUEUE_WIRE_KEY)")
    ns = p.parse_args(sys.argv[1:] if args is None else args)
    return server(ns.description, ns.port, ns.interface, keyFile=ns.key_file)


if __name__ == "__main__":
    from mcmandelbrot.wire import main as _main
    sys.exit(_main())
