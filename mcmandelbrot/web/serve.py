"""
``mcm serve``: the interactive Mandelbrot page on a twisted.web server whose
images all render on one Runner, until Ctrl-C or SIGTERM stops it cleanly.
MandelbrotService does the work, so twistd can run it too, from a tac file::

    from twisted.application.service import Application
    from mcmandelbrot.web.serve import MandelbrotService
    application = Application("mcm")
    MandelbrotService(port=8080).setServiceParent(application)
"""
import ipaddress
import sys

from twisted.application import service
from twisted.internet import defer

__all__ = ["run", "parseArgs", "MandelbrotService"]

#: 0.9's port, and the interface that keeps the server private by default.
DEFAULT_PORT, DEFAULT_INTERFACE = 8080, "127.0.0.1"
#: Iteration values of the web images (0.9's web value).
DEFAULT_VALUES = 3000
#: Exit statuses: stopped cleanly, could not serve, bad command line.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class MandelbrotService(service.Service):
    """
    Serves the page on TCP ``port`` of ``interface`` (port 0: any free
    one), its images rendered by a Runner of ``workers`` processes and
    ``N_values`` iteration values. ``url`` is where it listens once
    started; stopping it stops listening and shuts the Runner down.
    """

    def __init__(self, port=DEFAULT_PORT, interface=DEFAULT_INTERFACE,
                 workers=None, N_values=DEFAULT_VALUES, verbose=False):
        self.port, self.interface = port, interface
        self.workers, self.N_values, self.verbose = workers, N_values, verbose
        self.runner = self.listeningPort = None

    def startService(self):
        """Start the Runner and listen (CannotListenError if the port is
        taken; the Runner is shut down again then)."""
        from twisted.internet import reactor
        from ..runner import Runner
        from .resources import makeSite
        self.runner = Runner(self.N_values, workers=self.workers,
                             verbose=self.verbose)
        try:
            self.listeningPort = reactor.listenTCP(
                self.port, makeSite(self.runner), interface=self.interface)
        except Exception:
            self.runner.shutdown()
            raise
        service.Service.startService(self)

    @property
    def url(self):
        """The page's URL, e.g. ``http://127.0.0.1:8080/``."""
        host = self.listeningPort.getHost()
        address = host.host
        if ":" in address:
            address = "[{}]".format(address)
        return "http://{}:{:d}/".format(address, host.port)

    def stopService(self):
        """Stop listening, cancel the renders, stop the workers."""
        service.Service.stopService(self)
        waits = []
        if self.listeningPort is not None:
            waits.append(defer.maybeDeferred(self.listeningPort.stopListening))
            self.listeningPort = None
        if self.runner is not None:
            waits.append(self.runner.shutdown())
        return defer.DeferredList(waits).addCallback(lambda _: None)


def _parser():
    """The command line of ``mcm serve``."""
    from ..main import _Parser
    p = _Parser(prog="mcm serve", description=(
        "Serve the interactive Mandelbrot page: open the URL it prints in "
        "a browser, click to zoom in. Ctrl-C stops it."))
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument("--interface", default=DEFAULT_INTERFACE,
                   help="address to listen on (default 127.0.0.1; "
                   "0.0.0.0 for every network)")
    p.add_argument("-w", "--workers", type=int, default=None,
                   help="worker processes (default: all cores)")
    p.add_argument("-N", "--values", type=int, default=DEFAULT_VALUES,
                   metavar="N", help="iteration values (default 3000)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print a line for every image rendered")
    return p


def parseArgs(args):
    """The checked options of ``mcm serve ARGS``, or UsageError."""
    from ..main import UsageError
    from ..runner import checkValues
    ns = _parser().parse_args(args)
    if not 0 <= ns.port <= 65535:
        raise UsageError("--port must be 0..65535, not {:d}".format(ns.port))
    if ns.interface == "localhost":
        ns.interface = DEFAULT_INTERFACE
    try:
        ns.interface = str(ipaddress.ip_address(ns.interface))
    except ValueError:
        raise UsageError("--interface must be an IP address such as "
                         "127.0.0.1 or 0.0.0.0, not {!r}".format(ns.interface))
    if ns.workers is not None and not 1 <= ns.workers <= 4096:
        raise UsageError("-w must be 1..4096, not {:d}".format(ns.workers))
    try:
        checkValues(ns.values)
    except ValueError as e:
        raise UsageError("-N: {}".format(e))
    return ns


def _logErrors():
    """Send warnings and errors of the Twisted log to stderr (and not the
    access log, nor standard output)."""
    from twisted.logger import (
        FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
        globalLogBeginner, textFileLogObserver)
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _stopOnSignals(reactor):
    """Stop the reactor on the first SIGINT or SIGTERM and ignore the
    rest (Twisted's own handlers raise on a second Ctrl-C)."""
    import signal
    stopping = []

    def stop(signum, frame):
        if not stopping:
            stopping.append(signum)
            reactor.callFromThread(reactor.stop)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def run(args):
    """Run ``mcm serve ARGS`` until stopped; the exit status."""
    from ..main import UsageError
    try:
        ns = parseArgs(args)
    except UsageError as e:
        print("mcm serve: error: {}".format(e), file=sys.stderr)
        return EXIT_USAGE
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    mcmService = MandelbrotService(ns.port, ns.interface, ns.workers,
                                   ns.values, ns.verbose)
    status = [EXIT_OK]

    def start():
        reactor.addSystemEventTrigger(
            "before", "shutdown", mcmService.stopService)
        try:
            mcmService.startService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or e.socketError
            print("mcm serve: error: cannot listen on {}:{:d}: {}".format(
                ns.interface, ns.port, reason), file=sys.stderr)
            status[0] = EXIT_FAILED
            reactor.stop()
            return
        print("mcm serving {}".format(mcmService.url), flush=True)
        _stopOnSignals(reactor)

    _logErrors()
    reactor.callWhenRunning(start)
    reactor.run()
    return status[0]
