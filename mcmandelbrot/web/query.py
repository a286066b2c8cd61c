"""
The query of an image request (``/image.png?cr=&ci=&crpm=&cipm=&N=&client=``)
turned into a checked view, or a QueryError whose text is the one-line
reason a 400 response gives. Nothing here keeps state between requests.
"""
import re
from collections import namedtuple

from ..runner import MIN_SPAN, imageHeight

__all__ = ["View", "QueryError", "parseQuery", "NX_MIN", "NX_MAX",
           "NX_DEFAULT"]

#: The image width of a request is clamped to this range, as 0.9 did.
NX_MIN, NX_MAX = 240, 10000
#: The width of a request that gives no N.
NX_DEFAULT = 640
#: What a page's client id may look like.
CLIENT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

#: Coordinates and spans beyond this are refused (the set lies within 2).
COORDINATE_LIMIT = 1000.0


class View(namedtuple("View", "Nx cr ci crPM ciPM client")):
    """A checked request: the Runner's arguments, and the page that
    asked (or None)."""

    __slots__ = ()

    @property
    def Ny(self):
        """The rows of the image."""
        return imageHeight(self.Nx, self.crPM, self.ciPM)

    @property
    def pixels(self):
        """The pixels of the complete image."""
        return self.Nx * self.Ny


class QueryError(ValueError):
    """A missing or malformed query parameter; the text says which."""


def _text(args, name, required):
    """The (first) value of query parameter ``name`` as a str, or None."""
    values = args.get(name.encode("ascii"))
    if not values:
        if required:
            raise QueryError("{} is missing".format(name))
        return None
    try:
        return values[0].decode("ascii")
    except UnicodeDecodeError:
        raise QueryError("{} must be plain ASCII".format(name))


def _number(args, name, required=True):
    """Query parameter ``name`` as a finite float, or None if absent."""
    text = _text(args, name, required)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise QueryError("{} must be a number, not {!r}".format(
            name, text[:40]))
    if not abs(value) <= COORDINATE_LIMIT:
        raise QueryError("{} must be within +/-{:g}, not {!r}".format(
            name, COORDINATE_LIMIT, text[:40]))
    return value


def _width(args):
    """The requested width ``N``, clamped to [NX_MIN, NX_MAX]."""
    text = _text(args, "N", False)
    if text is None:
        return NX_DEFAULT
    try:
        width = int(text)
    except ValueError:
        raise QueryError("N must be a whole number of pixels, not {!r}".format(
            text[:40]))
    return min(NX_MAX, max(NX_MIN, width))


def _checkPrecision(name, center, halfSpan, pixels):
    """QueryError unless neighbouring pixels differ in float64."""
    from ..main import UsageError, _checkPrecision
    try:
        _checkPrecision(name, center, halfSpan, pixels)
    except UsageError as e:
        raise QueryError(str(e))


def parseQuery(args):
    """
    The View of a request's ``args`` (twisted.web's dict of bytes to lists
    of bytes): ``cr``, ``ci`` and ``crpm`` are required, ``cipm`` defaults
    to ``crpm``, ``N`` to 640 (clamped to 240..10000); ``client`` names the
    page that asked, if given. QueryError says what is wrong.
    """
    cr, ci, crPM = (_number(args, name) for name in ("cr", "ci", "crpm"))
    ciPM = _number(args, "cipm", required=False)
    ciPM = crPM if ciPM is None else ciPM
    for name, span in (("crpm", crPM), ("cipm", ciPM)):
        if not 2 * span > MIN_SPAN:
            raise QueryError("{} must be more than {:g}, not {:g}".format(
                name, MIN_SPAN / 2, span))
    Nx = _width(args)
    Ny = imageHeight(Nx, crPM, ciPM)
    if not 1 <= Ny <= NX_MAX:
        raise QueryError(
            "an image {:d} pixels wide with cipm/crpm = {:g} would be {:d} "
            "pixels high, not 1..{:d}".format(Nx, ciPM / crPM, Ny, NX_MAX))
    _checkPrecision("cr", cr, crPM, Nx)
    _checkPrecision("ci", ci, ciPM, Ny)
    client = _text(args, "client", False)
    if client is not None and not CLIENT_PATTERN.match(client):
        raise QueryError("client must be 1..64 letters, digits, '-' or '_'")
    return View(Nx, cr, ci, crPM, ciPM, client)
