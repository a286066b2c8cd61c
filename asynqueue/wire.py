"""
Remote workers: a ``WireWorker`` runs a TaskQueue's calls on a
``WireServer`` in another interpreter, on this host or another, over
Twisted AMP (``python -m asynqueue.wire DESCRIPTION FQN`` starts one;
``ServerManager`` spawns local ones).

The calls are methods of a ``WireWorkerUniverse`` subclass on the server,
called by name: ``queue.call("add", 1, 2)``. Connections are
authenticated with a shared key (HMAC challenge-response) before any call
is unpickled; TLS comes from ``ssl:``/``tls:`` endpoint descriptions.
"""
import os
import sys

from twisted.internet import defer, error, reactor

from . import util
from .childprocess import childEnvironment
from .slots import relayTo
from .wireclient import RemoteIterator, WireWorker
from .wireproto import (
    KEY_ENV, AuthenticationError, GetNext, RunTask, WireError, resolveKey)
from .wireserver import (
    DEFAULT_WWU_FQN, ChunkyString, WireRunner, WireServer,
    WireWorkerUniverse)

__all__ = [
    "RunTask", "GetNext", "WireWorkerUniverse", "WireWorker",
    "ChunkyString", "WireRunner", "WireServer", "ServerManager",
    "runServer", "WireError", "AuthenticationError", "RemoteIterator",
]

DEFAULT_SOCKET = b"unix:/var/run/wire"
#: The banner a server prints on stdout once it listens.
BANNER = "AsynQueue WireServer listening at {}"
#: Seconds ServerManager.done waits after SIGTERM before SIGKILL.
TERM_GRACE_SECONDS = 5.0


# --- Spawning servers --------------------------------------------------------

class ServerProcessProtocol(util.ProcessProtocol):
    """A spawned server process: ``dReady`` fires with me once it prints
    its banner, or fails with what it wrote to stderr if it ends first;
    ``dEnded`` fires when it ends."""

    def __init__(self, stopper=None):
        util.ProcessProtocol.__init__(self, stopper)
        self.dReady = defer.Deferred()
        self.dEnded = defer.Deferred()
        self.ended = False
        self._stdout = b""
        self._stderr = b""

    def childDataReceived(self, childFD, data):
        if childFD == 2:
            self._stderr = (self._stderr + data)[-8192:]
            if self.dReady.called:
                sys.stderr.write(data.decode(errors="replace"))
            return
        if self.dReady.called:
            return
        self._stdout += data
        if b"AsynQueue WireServer listening" in self._stdout:
            if not self.d.called:
                self.d.callback(self._stdout.strip())
            self.dReady.callback(self)
        self._stdout = self._stdout[-4096:]

    def processEnded(self, reason):
        self.ended = True
        util.ProcessProtocol.processEnded(self, reason)
        self.dEnded.callback(None)
        if not self.dReady.called:
            self.dReady.errback(WireError(
                "The wire server process {} ended ({}) before listening: "
                "{}".format(self.pid, reason.getErrorMessage(),
                            self._stderr.decode(errors="replace").strip())))


class ServerManager:
    """
    Spawns WireServers serving universe ``wwuFQN`` in new Python
    processes on this host (each with this process's environment and
    ``sys.path``, plus ``key`` if given), and ends them.
    """

    def __init__(self, wwuFQN=None, key=None, keyFile=None):
        self.processInfo = {}
        self.wwuFQN = DEFAULT_WWU_FQN if wwuFQN is None else wwuFQN
        self.key = resolveKey(key, keyFile)
        self._sockets = 0
        self.triggerID = reactor.addSystemEventTrigger(
            "before", "shutdown", self.shutdown)

    @defer.inlineCallbacks
    def shutdown(self):
        """End every server and remove the socket directory."""
        if self.triggerID is not None:
            try:
                reactor.removeSystemEventTrigger(self.triggerID)
            except (ValueError, KeyError):
                pass
            self.triggerID = None
        yield self.done()
        tempDir = getattr(self, "tempDir", None)
        if tempDir is not None:
            import shutil
            shutil.rmtree(tempDir, ignore_errors=True)
            del self.tempDir

    def spawn(self, description, stdio=False, niceness=0):
        """
        Start ``python -m asynqueue.wire description wwuFQN``. D→the
        process's ProcessProtocol (with ``pid``) if ``stdio``, else its
        pid, once it prints that it listens; fails with its error output
        if it ends first.
        """
        args = [sys.executable, "-m", "asynqueue.wire", description,
                self.wwuFQN]
        if niceness:
            args += ["--niceness", str(int(niceness))]
        env = childEnvironment()
        if self.key is not None:
            env[KEY_ENV] = self.key.decode("utf-8", "surrogateescape")
            env.pop("ASYNQUEUE_WIRE_KEYFILE", None)
        pp = ServerProcessProtocol()
        transport = reactor.spawnProcess(
            pp, sys.executable, args, env=env, path=os.getcwd())
        pid = transport.pid
        self.processInfo[pid] = {'pt': transport, 'pp': pp}
        pp.dEnded.addCallback(lambda _: self.processInfo.pop(pid, None))
        d = pp.dReady
        if not stdio:
            d.addCallback(lambda pp: pp.pid)
        return d

    def newSocket(self):
        """A new ``unix:`` description in a temporary directory of mine
        (removed at shutdown); names never repeat."""
        if getattr(self, "tempDir", None) is None:
            import tempfile
            self.tempDir = tempfile.mkdtemp(prefix="asynqueue-wire-")
        self._sockets += 1
        return "unix:" + os.path.join(
            self.tempDir, "worker-{:03d}.sock".format(self._sockets))

    def done(self, pid=None):
        """End the server ``pid`` (or all of mine): SIGTERM, then SIGKILL
        after a grace period. D→None once they have ended."""
        pids = list(self.processInfo) if pid is None else [pid]
        return defer.gatherResults(
            [self._end(pid) for pid in pids]).addCallback(lambda _: None)

    def _end(self, pid):
        info = self.processInfo.get(pid)
        if info is None:
            return defer.succeed(None)
        pp = info['pp']
        if pp.ended:
            return defer.succeed(None)
        _signal(info['pt'], "TERM")
        killer = reactor.callLater(
            TERM_GRACE_SECONDS, _signal, info['pt'], "KILL")
        d = defer.Deferred()
        pp.dEnded.addCallback(relayTo, d)
        return d.addBoth(_cancelTimer, killer)


def _signal(transport, name):
    try:
        transport.signalProcess(name)
    except error.ProcessExitedAlready:
        pass


def _cancelTimer(result, timer):
    if timer.active():
        timer.cancel()
    return result


# --- Running a server --------------------------------------------------------

def runServer(description, wwuFQN=DEFAULT_WWU_FQN, key=None, keyFile=None):
    """Serve ``wwuFQN`` at ``description`` until the reactor stops,
    printing the banner once listening. Returns the exit status."""
    try:
        ws = WireServer(description, wwuFQN, key=key, keyFile=keyFile)
    except Exception as e:
        sys.stderr.write("AsynQueue WireServer failed: {}\n".format(e))
        return 2
    outcome = []

    def listening(port):
        print(BANNER.format(description))
        sys.stdout.flush()

    def failed(failure):
        sys.stderr.write("AsynQueue WireServer failed: {}\n".format(
            failure.getErrorMessage()))
        outcome.append(1)
        reactor.stop()

    reactor.callWhenRunning(
        lambda: ws.start().addCallbacks(listening, failed))
    reactor.run()
    return outcome[0] if outcome else 0


def main(argv=None):
    """``python -m asynqueue.wire DESCRIPTION [FQN] [--key-file PATH]
    [--niceness N]``."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m asynqueue.wire",
        description="Serve a WireWorkerUniverse to WireWorkers. The key "
        "comes from --key-file or the {} environment variable.".format(
            KEY_ENV))
    parser.add_argument("description", help="a Twisted server endpoint, "
                        "e.g. unix:/tmp/wire.sock or "
                        "tcp:1978:interface=127.0.0.1")
    parser.add_argument("fqn", nargs="?", default=DEFAULT_WWU_FQN,
                        help="the WireWorkerUniverse subclass to serve")
    parser.add_argument("--key-file", dest="keyFile")
    parser.add_argument("--niceness", type=int, default=0)
    options = parser.parse_args(argv)
    if options.niceness:
        os.nice(options.niceness)
    return runServer(options.description, options.fqn,
                     keyFile=options.keyFile)


if __name__ == "__main__":
    sys.exit(main())
