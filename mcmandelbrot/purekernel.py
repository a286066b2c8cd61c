"""
The Mandelbrot escape-time kernel of mcmandelbrot in vectorised numpy: the
twin of the compiled ``mcmandelbrot._kernel``, giving identical counts and
identical bytes (same float operations in the same order), for tests and for
machines without the extension.

The argument checks of this module are shared with the compiled twin, which
imports them, so both raise the same clear errors for bad input. The twins
may look for cycles on different schedules: an exactly repeating z never
escapes, so the schedule changes how soon a point ends, never its count.
"""
import operator

import numpy

__all__ = ["evalPoint", "computeValues", "renderRows", "escapeIterations"]

#: The largest iteration limit: five counts of it must fit a C int.
MAX_ITERATIONS = (2 ** 31 - 1) // 5
#: Escape radius 4, compared with |z|² as 0.9 did.
ESCAPE_SQUARED = 16.0
#: splitmix64 constants (Steele, Lea and Flood), for the dither noise.
_GOLDEN = numpy.uint64(0x9E3779B97F4A7C15)
_MIX1 = numpy.uint64(0xBF58476D1CE4E5B9)
_MIX2 = numpy.uint64(0x94D049BB133111EB)
#: The sum of four 16-bit fields is centred by subtracting their mean.
_NOISE_CENTRE = 131070
#: Rows and columns are packed into a 64-bit key, 32 bits each.
_KEY_LIMIT = 2 ** 32


# --- Argument checks (also used by the compiled twin) ----------------------

def _checkIterations(km, name="km"):
    """``km`` as an int, which must lie in [1, MAX_ITERATIONS]."""
    try:
        km = operator.index(km)
    except TypeError:
        raise TypeError("{} must be an integer, not {}".format(
            name, type(km).__name__)) from None
    if not 1 <= km <= MAX_ITERATIONS:
        raise ValueError("{} must be between 1 and {:d}, not {:d}".format(
            name, MAX_ITERATIONS, km))
    return km


def _checkVector(values, name, dtype=numpy.float64):
    """``values`` as a 1-D C-contiguous array of exactly ``dtype``."""
    array = numpy.asarray(values)
    if array.dtype != dtype:
        raise TypeError("{} must be a {} array, not {}".format(
            name, numpy.dtype(dtype).name, array.dtype))
    if array.ndim != 1:
        raise ValueError("{} must be one-dimensional, not of shape {}".format(
            name, array.shape))
    return numpy.ascontiguousarray(array)


def _checkColorMap(cmap):
    """``cmap`` as a C-contiguous uint8 array of shape (colors, 3)."""
    array = numpy.asarray(cmap)
    if array.dtype != numpy.uint8:
        raise TypeError("cmap must be a uint8 array, not {}".format(
            array.dtype))
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] < 2:
        raise ValueError(
            "cmap must have shape (colors, 3) with at least 2 colors, "
            "not {}".format(array.shape))
    return numpy.ascontiguousarray(array)


def _checkOutput(out, nRows, nColumns):
    """``out`` as a writable C-contiguous uint8 array of scanlines."""
    if not isinstance(out, numpy.ndarray):
        try:
            out = memoryview(out)
        except TypeError:
            raise TypeError("out must be a buffer of uint8, not {}".format(
                type(out).__name__)) from None
    array = numpy.asarray(out)
    if array.dtype != numpy.uint8:
        raise TypeError("out must be a uint8 buffer, not {}".format(
            array.dtype))
    expected = (nRows, 1 + 3 * nColumns)
    if array.shape != expected:
        raise ValueError(
            "out must have shape {} (one filter byte and 3 bytes per pixel "
            "for each ci row), not {}".format(expected, array.shape))
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError("out must be a writable C-contiguous buffer")
    return array


def _checkRender(out, x, ci, qd, km, utable, cmap, noiseScale, row0):
    """The arguments of ``renderRows``, checked and converted."""
    x = _checkVector(x, "x")
    ci = _checkVector(ci, "ci")
    km = _checkIterations(km)
    utable = _checkVector(utable, "utable")
    if utable.shape[0] != 5 * km + 1:
        raise ValueError("utable must hold 5*km+1 = {:d} values, not "
                         "{:d}".format(5 * km + 1, utable.shape[0]))
    row0 = operator.index(row0)
    if row0 < 0 or row0 + ci.shape[0] > _KEY_LIMIT \
            or x.shape[0] > _KEY_LIMIT:
        raise ValueError("rows and columns must lie in [0, 2**32)")
    out = _checkOutput(out, ci.shape[0], x.shape[0])
    return (out, x, ci, float(qd), km, utable, _checkColorMap(cmap),
            float(noiseScale), row0)


def _checkPairs(cr, ci):
    """Two float64 vectors of equal length."""
    cr = _checkVector(cr, "cr")
    ci = _checkVector(ci, "ci")
    if cr.shape != ci.shape:
        raise ValueError("cr and ci must have the same length, not {:d} "
                         "and {:d}".format(cr.shape[0], ci.shape[0]))
    return cr, ci


# --- The escape-time counts -------------------------------------------------

def _inBulbOrCardioid(cr, ci):
    """True where c lies in the period-2 bulb or the main cardioid."""
    bulb = (cr + 1.0) * (cr + 1.0) + ci * ci < 0.0625
    q = (cr - 0.25) * (cr - 0.25) + ci * ci
    return bulb | (q * (q + cr - 0.25) < ci * ci / 4.0)


class _ActivePoints:
    """
    The points still iterating, with their z, c and last saved z, compacted
    as points leave so that every step works only on live points.
    """

    def __init__(self, cr, ci, index):
        self.index = index
        self.cr, self.ci = cr[index], ci[index]
        self.zr, self.zi = self.cr.copy(), self.ci.copy()
        self.savedR = numpy.zeros_like(self.zr)
        self.savedI = numpy.zeros_like(self.zi)

    def drop(self, leaving):
        """Forget the points where ``leaving`` is True."""
        keep = ~leaving
        for name in ("index", "cr", "ci", "zr", "zi", "savedR", "savedI"):
            setattr(self, name, getattr(self, name)[keep])


def _escapeCounts(cr, ci, km):
    """SPEC §4.3 ``eval_point`` for every pair (cr[i], ci[i]), in lockstep."""
    counts = numpy.full(cr.shape, km, dtype=numpy.int64)
    points = _ActivePoints(
        cr, ci, numpy.flatnonzero(~_inBulbOrCardioid(cr, ci)))
    k, kCheck, nCheck, kUpdate = 1, 0, 3, 0
    while k < km and points.index.size:
        zr2 = points.zr * points.zr
        zi2 = points.zi * points.zi
        escaped = zr2 + zi2 > ESCAPE_SQUARED
        if escaped.any():
            counts[points.index[escaped]] = k
            points.drop(escaped)
            zr2, zi2 = zr2[~escaped], zi2[~escaped]
        points.zi = 2.0 * points.zr * points.zi + points.ci
        points.zr = zr2 - zi2 + points.cr
        k += 1
        periodic = (points.zr == points.savedR) & (points.zi == points.savedI)
        if periodic.any():
            points.drop(periodic)
        if kCheck == nCheck:
            points.savedR, points.savedI = points.zr, points.zi
            kCheck = 0
            if kUpdate == 5:
                kUpdate = 0
                nCheck *= 2
            kUpdate += 1
        kCheck += 1
    return counts


def _fivePointSums(x, ci, qd, km):
    """
    The 5-point X value Z of each pixel (x[j], ci[j]): the five counts
    summed, or 5*km when any of the five points never escapes.
    """
    centre = _escapeCounts(x, ci, km)
    values = numpy.full(x.shape, 5 * km, dtype=numpy.int64)
    open_ = numpy.flatnonzero(centre < km)
    xs, cis = x[open_], ci[open_]
    diagonalR = numpy.concatenate([xs - qd, xs - qd, xs + qd, xs + qd])
    diagonalI = numpy.concatenate([cis - qd, cis + qd, cis - qd, cis + qd])
    diagonals = _escapeCounts(diagonalR, diagonalI, km).reshape(4, -1)
    inside = (diagonals == km).any(axis=0)
    values[open_] = numpy.where(
        inside, 5 * km, centre[open_] + diagonals.sum(axis=0))
    return values


# --- Colours ----------------------------------------------------------------

def ditherSteps(row0, nRows, nColumns):
    """
    The integer noise d in [-131070, 131070] of each pixel of rows
    row0..row0+nRows-1: splitmix64 of (row << 32 | column), its four 16-bit
    fields summed and centred (an Irwin-Hall stand-in for a normal draw).
    """
    rows = numpy.arange(row0, row0 + nRows, dtype=numpy.uint64)
    columns = numpy.arange(nColumns, dtype=numpy.uint64)
    z = (rows[:, None] << numpy.uint64(32)) | columns[None, :]
    z = z + _GOLDEN
    z = (z ^ (z >> numpy.uint64(30))) * _MIX1
    z = (z ^ (z >> numpy.uint64(27))) * _MIX2
    z ^= z >> numpy.uint64(31)
    field = numpy.uint64(0xFFFF)
    total = (z & field) + ((z >> numpy.uint64(16)) & field) \
        + ((z >> numpy.uint64(32)) & field) + (z >> numpy.uint64(48))
    return total.astype(numpy.int64) - _NOISE_CENTRE


def colorize(u, row0, cmap, noiseScale):
    """
    The RGB colours (nRows, nColumns, 3) of the values ``u`` (nRows,
    nColumns) in [0, 1]: dithered by position, clipped, and looked up in
    ``cmap`` at rint(jMax*u). A NaN value takes the first colour.
    """
    noise = ditherSteps(row0, u.shape[0], u.shape[1]).astype(numpy.float64)
    u = u + noise * noiseScale
    u = numpy.where(u > 0.0, numpy.minimum(u, 1.0), 0.0)
    jMax = float(cmap.shape[0] - 1)
    return cmap[numpy.rint(jMax * u).astype(numpy.intp)]


# --- The contract shared with the compiled twin ------------------------------

def evalPoint(cr, ci, km):
    """The escape count of c = cr + i*ci, or ``km`` if it never escapes."""
    km = _checkIterations(km)
    point = numpy.array([float(cr)]), numpy.array([float(ci)])
    return int(_escapeCounts(point[0], point[1], km)[0])


def computeValues(x, ci, qd, km):
    """The 5-point X values Z (int64) of the pixels (x[j], ci)."""
    x = _checkVector(x, "x")
    km = _checkIterations(km)
    return _fivePointSums(x, numpy.full(x.shape, float(ci)), float(qd), km)


def renderRows(out, x, ci, qd, km, utable, cmap, noiseScale, row0):
    """
    Write PNG scanlines into ``out`` (nRows, 1+3*Nx): filter byte 0, then
    the colour cmap[rint(jMax*clip(utable[Z] + d*noiseScale))] of each
    pixel, where Z is its 5-point X value and d its position's dither step.
    """
    (out, x, ci, qd, km, utable, cmap, noiseScale, row0) = _checkRender(
        out, x, ci, qd, km, utable, cmap, noiseScale, row0)
    nRows, nColumns = ci.shape[0], x.shape[0]
    values = _fivePointSums(
        numpy.tile(x, nRows), numpy.repeat(ci, nColumns), qd, km)
    u = utable[values.reshape(nRows, nColumns)]
    out[:, 0] = 0
    out[:, 1:] = colorize(u, row0, cmap, noiseScale).reshape(nRows, -1)


def escapeIterations(cr, ci, maxIter):
    """
    The total number of iterations of the plain escape loop (|z|² > 16, no
    bulb, cardioid or periodicity test) over every pair (cr[i], ci[i]),
    with active-set compaction and in-place arithmetic.
    """
    cr, ci = _checkPairs(cr, ci)
    maxIter = _checkIterations(maxIter, "maxIter")
    arrays = [cr.copy(), ci.copy(), cr.copy(), ci.copy()]
    arrays += [numpy.empty_like(cr) for _ in range(3)]
    total = 0
    for _ in range(1, maxIter):
        cr, ci, zr, zi, zr2, zi2, twiceZr = arrays
        numpy.multiply(zr, zr, out=zr2)
        numpy.multiply(zi, zi, out=zi2)
        escaped = numpy.add(zr2, zi2, out=twiceZr) > ESCAPE_SQUARED
        if escaped.any():
            keep = ~escaped
            arrays = [a[keep] for a in arrays]
            cr, ci, zr, zi, zr2, zi2, twiceZr = arrays
            if not cr.size:
                break
        total += cr.size
        numpy.multiply(zr, 2.0, out=twiceZr)
        zi *= twiceZr
        zi += ci
        numpy.subtract(zr2, zi2, out=zr)
        zr += cr
    return total
