"""
The ``mcm`` (and ``mcmandelbrot``) command: renders a Mandelbrot PNG on
every core. 0.9's command line keeps working::

    mcm [-N values] [-o imageFile] [-d description] Nx cr ci crPM [ciPM]
    mcm serve [--port 8080] [--interface 127.0.0.1] [-w workers]

Bad input gets a one-line error and exit status 2; an interrupted render
leaves no file behind under the output's name.
"""
import argparse
import importlib.util
import math
import os
import sys
import tempfile

from .exiting import spareFinalCollections

__all__ = ["run", "main", "parseArgs", "UsageError"]

#: Exit status for bad input (as argparse uses), and after Ctrl-C.
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
#: A render may use at most this fraction of the memory available.
MEMORY_FRACTION = 0.5


class UsageError(ValueError):
    """Bad command-line input; its text is the one-line reason."""


class _Parser(argparse.ArgumentParser):
    """argparse, raising UsageError instead of printing and exiting."""

    def error(self, message):
        raise UsageError(message)


def _parser():
    """The command line of ``mcm``."""
    p = _Parser(
        prog="mcm", description=(
            "Render the Mandelbrot set around cr + ci*i, cr +/- crPM wide "
            "and ci +/- ciPM high (ciPM defaults to crPM), as a PNG Nx "
            "pixels wide, on every CPU core."),
        epilog="Example: mcm -o mandelbrot.png 2000 -0.630 0 1.4 1.2")
    p.add_argument("-N", "--values", type=int, default=2000, metavar="N",
                   help="iteration values (default 2000)")
    p.add_argument("-o", "--output", default="", metavar="imageFile",
                   help="PNG file to write (default: standard output)")
    p.add_argument("-d", "--description", default="", metavar="description",
                   help="endpoint of a remote mcm server, e.g. tcp:host:1978")
    p.add_argument("-k", "--key-file", default=None, metavar="keyFile",
                   help="with -d: the file holding the server's shared key "
                   "(default: $ASYNQUEUE_WIRE_KEY or $ASYNQUEUE_WIRE_KEYFILE)")
    p.add_argument("-s", "--steepness", type=float, default=3.0,
                   help="steepness of the colour transform (default 3)")
    p.add_argument("-w", "--workers", type=int, default=None,
                   help="worker processes (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no statistics")
    for name, kind in (("Nx", "image width in pixels"),
                       ("cr", "real part of the centre"),
                       ("ci", "imaginary part of the centre"),
                       ("crPM", "real half-span"),
                       ("ciPM", "imaginary half-span (default crPM)")):
        p.add_argument(name, help=kind, **(
            {"nargs": "?"} if name == "ciPM" else {}))
    return p


def _number(name, text, kind=float):
    """``text`` converted by ``kind``, finite, or UsageError."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UsageError("{} must be a {}, not {!r}".format(
            name, "whole number" if kind is int else "number", text))
    if not math.isfinite(value):
        raise UsageError("{} must be finite, not {!r}".format(name, text))
    return value


def _availableMemory():
    """Bytes of memory available now (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _checkPrecision(name, center, halfSpan, pixels):
    """UsageError unless neighbouring pixels differ in float64."""
    ulp = math.ulp(abs(center) + halfSpan)
    pitch = 2 * halfSpan / max(pixels, 1)
    if pitch < ulp:
        raise UsageError(
            "{} +/- {:g} over {:d} pixels is beyond float64 precision: "
            "pixels would be {:.1e} apart, but numbers near {:g} are only "
            "{:.1e} apart; use a half-span of at least {:.1e}".format(
                name, halfSpan, pixels, pitch, abs(center) + halfSpan, ulp,
                ulp * pixels / 2))


def parseArgs(args):
    """The checked options of a command line, or UsageError."""
    from . import band, runner
    from .png import PNG_MAX
    ns = _parser().parse_args(args)
    Nx = _number("Nx", ns.Nx, int)
    cr, ci, crPM = (_number(n, getattr(ns, n)) for n in ("cr", "ci", "crPM"))
    ciPM = crPM if ns.ciPM is None else _number("ciPM", ns.ciPM)
    if Nx < 1:
        raise UsageError("Nx must be at least 1, not {:d}".format(Nx))
    for name, span in (("crPM", crPM), ("ciPM", ciPM)):
        if 2 * span <= runner.MIN_SPAN:
            raise UsageError("{} must be more than {:g}, not {:g}".format(
                name, runner.MIN_SPAN / 2, span))
    try:
        runner.checkValues(ns.values)
    except ValueError as e:
        raise UsageError("-N: {}".format(e))
    if ns.workers is not None and not 1 <= ns.workers <= 4096:
        raise UsageError("-w must be 1..4096, not {:d}".format(ns.workers))
    if not ns.steepness > 0 or not math.isfinite(ns.steepness):
        raise UsageError("-s must be a positive number, not {:g}".format(
            ns.steepness))
    Ny = runner.imageHeight(Nx, crPM, ciPM)
    if Ny < 1:
        raise UsageError("an image {:d} pixels wide with that aspect ratio "
                         "has no rows".format(Nx))
    if max(Nx, Ny) > PNG_MAX:
        raise UsageError("a PNG is at most {:d} pixels on a side, not "
                         "{:d} x {:d}".format(PNG_MAX, Nx, Ny))
    workers = ns.workers or os.cpu_count() or 1
    need = (1 + 3 * Nx) * band.rowsPerBand(Nx) * (
        runner.Runner.slotsPerWorker + 2) * workers
    available = _availableMemory()
    if available is not None and need > MEMORY_FRACTION * available:
        raise UsageError("an image {:d} pixels wide needs {:.0f} MiB of "
                         "memory, more than this machine can spare".format(
                             Nx, need / 2**20))
    if ns.description and importlib.util.find_spec(
            "mcmandelbrot.wire") is None:
        raise UsageError("remote rendering (-d) is not available in this "
                         "installation")
    _checkPrecision("cr", cr, crPM, Nx)
    _checkPrecision("ci", ci, ciPM, Ny)
    ns.view = (Nx, cr, ci, crPM, ciPM)
    return ns


class _Output:
    """
    Where the PNG goes: standard output, or a temporary file beside the
    output that takes its name only once the image is complete.
    """

    def __init__(self, path):
        self.path = path
        if not path:
            if sys.stdout.isatty():
                raise UsageError("refusing to write a PNG to a terminal: "
                                 "use -o imageFile or a pipe")
            self.fh = sys.stdout.buffer
            return
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise UsageError("{} is a directory".format(path))
        try:
            fd, self.temp = tempfile.mkstemp(
                prefix=".mcm-", suffix=".part", dir=directory)
        except OSError as e:
            raise UsageError("cannot write {}: {}".format(
                path, e.strerror or e))
        self.fh = os.fdopen(fd, "wb")

    def commit(self):
        """Give the finished image its name."""
        if self.path:
            self.fh.close()
            os.chmod(self.temp, 0o666 & ~_umask())
            os.replace(self.temp, self.path)
        else:
            self.fh.flush()

    def discard(self):
        """Remove what was written of an unfinished image."""
        if self.path:
            self.fh.close()
            try:
                os.unlink(self.temp)
            except FileNotFoundError:
                pass


def _umask():
    """The process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _progressBar(ns, Ny):
    """A progress callback drawing a bar on stderr, or None."""
    if ns.quiet or not ns.output:
        return None, None
    from tqdm import tqdm
    bar = tqdm(total=Ny, unit="rows", file=sys.stderr, leave=False,
               desc=os.path.basename(ns.output))

    def progress(done, total):
        bar.update(done - bar.n)

    return progress, bar


def _render(ns, output):
    """D→runInfo: render the view of ``ns`` to ``output``, print the
    statistics unless quiet, shut the runner down."""
    from twisted.internet import defer
    from .runner import Runner, imageHeight
    Nx, cr, ci, crPM, ciPM = ns.view
    if ns.description:
        from .wire import RemoteRunner
        runner = RemoteRunner(ns.description, keyFile=ns.key_file)
        dStart = runner.setup(N_values=ns.values, steepness=ns.steepness)
    else:
        showStats = bool(ns.output) and not ns.quiet
        runner = Runner(ns.values, stats=showStats, steepness=ns.steepness,
                        workers=ns.workers)
        dStart = defer.succeed(None)
    progress, bar = _progressBar(ns, imageHeight(Nx, crPM, ciPM))

    @defer.inlineCallbacks
    def go():
        try:
            yield dStart
            runInfo = yield runner.run(
                output.fh, Nx, cr, ci, crPM, ciPM, progress=progress)
            if runInfo[1] < Nx * imageHeight(Nx, crPM, ciPM):
                raise defer.CancelledError("the render was stopped")
            if bar is not None:
                bar.close()
            output.commit()
            if ns.output and not ns.quiet:
                yield runner.showStats(runInfo)
            return runInfo
        finally:
            if bar is not None:
                bar.close()
            yield runner.shutdown()

    return go(), runner


def run(*args, **kw):
    """
    Run ``mcm`` with ``args`` (default: ``sys.argv[1:]``). With
    ``ignoreReactor=True`` return a Deferred firing ``(seconds, pixels)``
    (the caller runs the reactor); else run the reactor and return the
    exit status.
    """
    args = list(args) if args else sys.argv[1:]
    if args[:1] == ["serve"]:
        from .web.serve import run as serve
        return serve(args[1:])
    try:
        ns = parseArgs(args)
        output = _Output(ns.output)
    except UsageError as e:
        print("mcm: error: {}".format(e), file=sys.stderr)
        if kw.get("ignoreReactor"):
            from twisted.internet import defer
            return defer.fail(e)
        return EXIT_USAGE
    if kw.get("ignoreReactor"):
        d, _ = _render(ns, output)
        return d.addErrback(_discarding, output)
    return _runReactor(ns, output)


def _discarding(failure, output):
    """Remove the partial output, pass the failure on."""
    output.discard()
    return failure


def _runReactor(ns, output):
    """Render under a reactor run here; the exit status."""
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError
    outcome = {}

    def start():
        d, runner = _render(ns, output)
        reactor.addSystemEventTrigger("before", "shutdown", runner.shutdown)
        d.addCallbacks(lambda r: outcome.setdefault("ok", r),
                       lambda f: outcome.setdefault("failure", f))
        d.addBoth(lambda _: _stopReactor(reactor))

    reactor.callWhenRunning(start)
    reactor.run()
    if "ok" in outcome:
        return 0
    output.discard()
    failure = outcome.get("failure")
    if failure is not None and not failure.check(CancelledError):
        print("mcm: error: {}".format(outcome["failure"].getErrorMessage()),
              file=sys.stderr)
        return 1
    print("mcm: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _stopReactor(reactor):
    """Stop the reactor unless it is stopping already (after Ctrl-C)."""
    from twisted.internet.error import ReactorNotRunning
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def main():
    """Console entry point of ``mcm`` and ``mcmandelbrot``."""
    status = run()
    spareFinalCollections()
    sys.exit(status)
