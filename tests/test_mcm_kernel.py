"""
The Mandelbrot kernel of mcmandelbrot: 0.9's algorithm (checked against a
scalar transcription of SPEC §4.3 and the golden values), the compiled and
numpy twins giving identical bytes, bands rendered independently of how the
image is split, the tables, the valuer and colormapper, and bad input.
"""
import importlib
import os

import numpy
import pytest
from hypothesis import given, settings, strategies as st

from asynqueue import SharedArray
from mcmandelbrot import kernel, purekernel
from mcmandelbrot.colormap import ColorMapper
from mcmandelbrot.valuer import MandelbrotValuer

PURE_WANTED = os.environ.get("ASYNQUEUE_PUREPYTHON", "") not in ("", "0")

try:
    compiledKernel = importlib.import_module("mcmandelbrot._kernel")
except ImportError:
    compiledKernel = None

needsCompiled = pytest.mark.skipif(
    compiledKernel is None,
    reason="mcmandelbrot._kernel is not built (setup.py build_ext)")

TWINS = [
    pytest.param(purekernel, id="pure"),
    pytest.param(compiledKernel, id="compiled", marks=needsCompiled),
]

#: The golden view of SPEC §4.3.
GOLDEN_CR, GOLDEN_CI, GOLDEN_CRPM = -0.5332179372197309, 0.535867264573991, 0.00224


def referenceEvalPoint(cr, ci, N):
    """SPEC §4.3 ``eval_point``, transcribed one statement at a time."""
    x, y = cr, ci
    if (x + 1.0) * (x + 1.0) + y * y < 0.0625:
        return N
    q = (x - 0.25) * (x - 0.25) + y * y
    if q * (q + x - 0.25) < y * y / 4.0:
        return N
    zr, zi, k = cr, ci, 1
    savedR = savedI = 0.0
    kCheck, nCheck, kUpdate = 0, 3, 0
    while k < N:
        zr2, zi2 = zr * zr, zi * zi
        if zr2 + zi2 > 16.0:
            return k
        zi = 2.0 * zr * zi + ci
        zr = zr2 - zi2 + cr
        k += 1
        if zr == savedR and zi == savedI:
            return N
        if kCheck == nCheck:
            savedR, savedI = zr, zi
            kCheck = 0
            if kUpdate == 5:
                kUpdate = 0
                nCheck *= 2
            kUpdate += 1
        kCheck += 1
    return k


def goldenRow():
    """x, ci, qd of the golden 10-pixel row."""
    crMin, crMax = GOLDEN_CR - GOLDEN_CRPM, GOLDEN_CR + GOLDEN_CRPM
    return (numpy.linspace(crMin, crMax, 10), GOLDEN_CI,
            0.25 * (crMax - crMin) / 10)


def renderArrays(module, x, ci, qd, row0, N_values=1000, steepness=3,
                 noiseScale=kernel.NOISE_SCALE):
    """Scanlines of the rows ``ci`` (the first being image row ``row0``)
    of the pixels ``x``, rendered by ``module``'s renderRows."""
    out = numpy.full((len(ci), 1 + 3 * len(x)), 7, dtype=numpy.uint8)
    module.renderRows(
        out, x, ci, qd, N_values - 1, kernel.valueTable(N_values, steepness),
        kernel.colorTable(), noiseScale, row0)
    return out


def render(module, view, rows, N_values=1000, steepness=3, **kw):
    """Scanlines of ``rows`` (a range) of ``view`` = (crMin, crMax, Nx,
    ciTop, ciBottom, Ny) rendered by ``module``'s renderRows."""
    crMin, crMax, Nx, ciTop, ciBottom, Ny = view
    ci = numpy.linspace(ciTop, ciBottom, Ny)[rows.start:rows.stop]
    return renderArrays(
        module, numpy.linspace(crMin, crMax, Nx), ci,
        0.25 * (crMax - crMin) / Nx, rows.start, N_values, steepness, **kw)


def twinsAgree(*arguments, render=render, **kw):
    """Both twins give the same bytes, which they return."""
    pure = render(purekernel, *arguments, **kw)
    assert numpy.array_equal(render(compiledKernel, *arguments, **kw), pure)
    return pure


DEFAULT_VIEW = (-2.03, 0.77, 40, 1.2, -1.2, 30)


class TestAlgorithm:

    @pytest.mark.parametrize("module", TWINS)
    def test_golden(self, module):
        x, ci, qd = goldenRow()
        bare = [module.evalPoint(cr, ci, 999) for cr in x]
        assert (min(bare), max(bare)) == (75, 999)
        values = module.computeValues(x, ci, qd, 999)
        assert values.dtype == numpy.int64
        assert (values.min(), values.max()) == (384, 4995)

    @pytest.mark.parametrize("module", TWINS)
    def test_matchesSpec(self, module):
        points = numpy.random.default_rng(5).uniform(
            [-2.1, -1.3], [0.7, 1.3], size=(300, 2))
        for cr, ci in points:
            for km in (1, 2, 57, 400):
                assert module.evalPoint(cr, ci, km) == \
                    referenceEvalPoint(cr, ci, km)

    @pytest.mark.parametrize("module", TWINS)
    def test_earlyExits(self, module):
        assert module.evalPoint(5.0, 0.0, 100) == 1
        assert module.evalPoint(2.0, 2.0, 100) == 2
        assert module.evalPoint(-1.0, 0.1, 100) == 100     # period-2 bulb
        assert module.evalPoint(0.1, 0.1, 100) == 100      # main cardioid
        # A period-3 bulb: only the periodicity check ends it early.
        assert module.evalPoint(-0.1226, 0.7449, 10 ** 8) == 10 ** 8

    @pytest.mark.parametrize("module", TWINS)
    def test_fivePointRule(self, module):
        x = numpy.array([-0.75, -0.7, 0.3, 0.26, -1.9])
        ci, qd, km = 0.1, 0.004, 300
        values = module.computeValues(x, ci, qd, km)
        for cr, value in zip(x, values):
            counts = [referenceEvalPoint(cr + dr, ci + di, km) for dr, di in
                      [(0, 0), (-qd, -qd), (-qd, qd), (qd, -qd), (qd, qd)]]
            expected = 5 * km if km in counts else sum(counts)
            assert value == expected

    @pytest.mark.parametrize("module", TWINS)
    @pytest.mark.parametrize("km", [1, 2, 8, 9, 10, 11, 40, 300])
    def test_rowsMatchPoints(self, module, km):
        # computeValues runs long-lived points side by side (the compiled
        # kernel in vector lanes, after a scalar start): the counts must be
        # those of evalPoint, one point at a time.
        rng = numpy.random.default_rng(km)
        for cr, ci, span in [(-0.7454, 0.1130, 1e-3), (-0.1226, 0.7449, 0.05),
                             (-0.1, 0.83, 0.02), (-1.77, 0.0, 0.02),
                             (0.2501, 0.0, 1e-4)]:
            x = numpy.sort(rng.uniform(cr - span, cr + span, 37))
            qd = span / 50
            expected = []
            for x0 in x:
                counts = [module.evalPoint(x0 + dr, ci + di, km) for dr, di in
                          [(0, 0), (-qd, -qd), (-qd, qd), (qd, -qd), (qd, qd)]]
                expected.append(5 * km if km in counts else sum(counts))
            assert list(module.computeValues(x, ci, qd, km)) == expected

    @pytest.mark.parametrize("module", TWINS)
    def test_escapeIterations(self, module):
        rng = numpy.random.default_rng(3)
        cr, ci = rng.uniform(-2, 0.6, 500), rng.uniform(-1.2, 1.2, 500)
        for maxIter in (1, 2, 9, 10, 11, 150):
            expected = 0
            for a, b in zip(cr, ci):
                zr, zi, k = a, b, 1
                while k < maxIter and zr * zr + zi * zi <= 16.0:
                    zr, zi, k = zr * zr - zi * zi + a, 2.0 * zr * zi + b, k + 1
                expected += k - 1
            assert module.escapeIterations(cr, ci, maxIter) == expected


class TestTwins:

    @needsCompiled
    @pytest.mark.parametrize("view, rows, N_values, steepness", [
        (DEFAULT_VIEW, range(0, 30), 1000, 3),
        (DEFAULT_VIEW, range(11, 17), 50, 2),
        ((-0.75, -0.73, 24, 0.2, 0.18, 20), range(3, 20), 700, 2.5),
        ((GOLDEN_CR - GOLDEN_CRPM, GOLDEN_CR + GOLDEN_CRPM, 16,
          GOLDEN_CI + GOLDEN_CRPM, GOLDEN_CI - GOLDEN_CRPM, 16),
         range(0, 16), 1000, 5),
    ])
    def test_identicalBytes(self, view, rows, N_values, steepness):
        twinsAgree(view, rows, N_values=N_values, steepness=steepness)

    @needsCompiled
    @pytest.mark.parametrize("view, rows", [
        ((-0.8, -0.7, 100, 0.15, 0.05, 100), range(0, 100)),
        ((-2.0, 0.5, 9000, 0.3, 0.3, 1), range(0, 1)),
    ], ids=["two groups of rows", "a row of more than 8192 pixels"])
    def test_identicalLargeBands(self, view, rows):
        twinsAgree(view, rows, N_values=60)

    @needsCompiled
    def test_identicalNoise(self):
        # Noise large enough to move every pixel's colour index.
        out = twinsAgree(DEFAULT_VIEW, range(5, 9), noiseScale=1e-6)
        assert len(numpy.unique(out[:, 1:].reshape(-1, 3), axis=0)) > 50

    @needsCompiled
    def test_identicalForNaN(self):
        # A NaN value takes the first colour (and never an index outside
        # the colormap), in both twins.
        table = numpy.full(5 * 99 + 1, numpy.nan)
        outs = []
        for module in (purekernel, compiledKernel):
            out = numpy.zeros((4, 31), dtype=numpy.uint8)
            module.renderRows(out, numpy.linspace(-2, 0.5, 10),
                              numpy.linspace(1, -1, 4), 0.01, 99, table,
                              kernel.colorTable(), kernel.NOISE_SCALE, 0)
            outs.append(out)
        assert numpy.array_equal(*outs)
        assert (outs[0][:, 1:].reshape(-1, 3) == kernel.colorTable()[0]).all()

    @needsCompiled
    @settings(max_examples=25, deadline=None)
    @given(st.floats(-2.2, 0.6), st.floats(-1.3, 1.3),
           st.floats(1e-12, 0.5), st.integers(1, 12), st.integers(1, 5),
           st.integers(0, 2 ** 31), st.integers(2, 400),
           st.sampled_from([1, 2, 3, 4.5]))
    def test_randomViews(self, cr, ci, span, Nx, nRows, row0, N_values,
                         steepness):
        x = numpy.linspace(cr - span, cr + span, Nx)
        rows = numpy.linspace(ci + span, ci - span, nRows)
        twinsAgree(x, rows, span / Nx, row0, N_values, steepness,
                   render=renderArrays)

    @needsCompiled
    def test_sameEscapeIterations(self):
        cr = numpy.tile(numpy.linspace(-2, 0.6, 40), 30)
        ci = numpy.repeat(numpy.linspace(1.2, -1.2, 30), 40)
        assert compiledKernel.escapeIterations(cr, ci, 200) == \
            purekernel.escapeIterations(cr, ci, 200)


class TestBands:

    @pytest.mark.parametrize("module", TWINS)
    def test_partitionIndependence(self, module):
        whole = render(module, DEFAULT_VIEW, range(0, 30), N_values=300)
        pieces = [render(module, DEFAULT_VIEW, range(start, stop), 300)
                  for start, stop in [(0, 7), (7, 8), (8, 29), (29, 30)]]
        assert numpy.array_equal(numpy.concatenate(pieces), whole)

    def test_scanlines(self):
        out = render(kernel, DEFAULT_VIEW, range(0, 30))
        assert not out[:, 0].any()
        colors = {tuple(c) for c in out[:, 1:].reshape(-1, 3)}
        insideIndex = int(numpy.rint(5999 * kernel.valueTable(1000)[-1]))
        assert tuple(kernel.colorTable()[insideIndex]) in colors
        assert len(colors) > 20

    def test_renderBand(self):
        crMin, crMax, Nx, ciTop, ciBottom, Ny = DEFAULT_VIEW
        whole = render(kernel, DEFAULT_VIEW, range(0, Ny), 500, 2)
        bands = []
        for row0 in range(0, Ny, 8):
            band = numpy.zeros((min(8, Ny - row0), 1 + 3 * Nx), numpy.uint8)
            kernel.renderBand(band, *DEFAULT_VIEW, row0, 500, 2)
            bands.append(band)
        assert numpy.array_equal(numpy.concatenate(bands), whole)

    @pytest.mark.parametrize("start, stop, num", [
        (1.2, -1.2, 1), (1.2, -1.2, 2), (1.2, -1.2, 1601), (0.3, 0.3, 50),
        (0.5, 0.5 - 1e-320, 40), (-3e-14, 7e-14, 999), (1e10, -3.7, 77)])
    def test_bandRowsMatchLinspace(self, start, stop, num):
        full = numpy.linspace(start, stop, num)
        for first, count in [(0, num), (0, 1), (num - 1, 1), (num // 3, 5),
                             (num // 2, num - num // 2), (num, 0)]:
            count = min(count, num - first)
            rows = kernel._linspaceSlice(start, stop, num, first, count)
            assert numpy.array_equal(rows, full[first:first + count])

    def test_intoSharedArray(self):
        with SharedArray((5, 1 + 3 * 40), dtype=numpy.uint8) as slot:
            kernel.renderBand(slot, *DEFAULT_VIEW, 20, 1000)
            assert numpy.array_equal(
                slot, render(kernel, DEFAULT_VIEW, range(20, 25)))

    def test_intoMemoryview(self):
        buffer = bytearray(2 * (1 + 3 * 40))
        kernel.renderBand(memoryview(buffer).cast("B", (2, 121)),
                          *DEFAULT_VIEW, 3, 1000)
        assert buffer == render(kernel, DEFAULT_VIEW, range(3, 5)).tobytes()


class TestTables:

    def test_colorSamples(self):
        table = kernel.colorTable()
        assert table.shape == (6000, 3) and table.dtype == numpy.uint8
        samples = {j: tuple(int(v) for v in table[j])
                   for j in (0, 5000, 5600, 5999)}
        assert samples == {0: (0, 0, 20), 5000: (227, 0, 22),
                           5600: (255, 132, 82), 5999: (255, 220, 200)}
        assert not table.flags.writeable

    def test_colorRamps(self):
        table = kernel.colorTable().astype(int)
        j = numpy.arange(6000)
        assert numpy.array_equal(table[:5600, 0], 255 * j[:5600] // 5599)
        assert not table[:5000, 1].any()
        ripple = table[:5400, 2] - 20
        assert ripple.min() == -19 and ripple.max() == 19

    def test_valueTable(self):
        table = kernel.valueTable(1000)
        Z = numpy.arange(5 * 999 + 1)
        scale = 0.2 / 1000
        expected = ((2 * scale * (5 * 1000 - Z) - 1) ** 3 + 1) / 2
        assert numpy.array_equal(table, expected)
        assert kernel.valueTable(1000) is table and not table.flags.writeable

    @pytest.mark.parametrize("steepness", [1, 2, 2.5, 7])
    def test_valueTableMonotone(self, steepness):
        table = kernel.valueTable(200, steepness)
        assert (numpy.diff(table) <= 0).all()
        assert 0 <= table.min() and table.max() <= 1

    def test_ditherSteps(self):
        steps = purekernel.ditherSteps(7, 200, 300)
        assert steps.min() >= -131070 and steps.max() <= 131070
        assert abs(steps.mean()) < 500
        assert abs(steps.std() * 3 ** 0.5 / 65536 - 1) < 0.02
        assert numpy.array_equal(purekernel.ditherSteps(8, 1, 300), steps[1:2])

    def test_liveModule(self):
        expected = purekernel if PURE_WANTED or compiledKernel is None \
            else compiledKernel
        assert kernel.renderRows is expected.renderRows
        assert kernel.COMPILED is (expected is compiledKernel)


class TestValuer:

    def test_attributes(self):
        valuer = MandelbrotValuer(1000)
        assert valuer.steepness == 3 and valuer.scale == 0.2 / 1000
        cm = valuer.cm
        assert (cm.N_colors, cm.jMax, cm.dither) == (6000, 5999, 0.05 / 6000)
        assert numpy.array_equal(cm.rgb, kernel.colorTable())
        assert numpy.array_equal(cm.loadMap(6000), cm.rgb)

    def test_goldenValues(self):
        valuer = MandelbrotValuer(1000)
        x, ci, qd = goldenRow()
        assert valuer.computeValues(10, x, ci, qd).min() == 384
        assert valuer.evalPoint(x[0], ci) == referenceEvalPoint(x[0], ci, 999)

    def test_rowsMatchBands(self):
        valuer = MandelbrotValuer(600, steepness=2)
        crMin, crMax, Nx, ciTop, ciBottom, Ny = DEFAULT_VIEW
        band = render(kernel, DEFAULT_VIEW, range(0, Ny), 600, 2)
        ci = numpy.linspace(ciTop, ciBottom, Ny)
        for row in (0, 13, 29):
            colors = valuer(crMin, crMax, Nx, ci[row], row)
            assert colors.typecode == "B" and len(colors) == 3 * Nx
            assert colors.tobytes() == band[row, 1:].tobytes()

    def test_colorMapper(self):
        cm = ColorMapper()
        u = numpy.linspace(0, 1, 101)
        before = u.copy()
        colors = cm(u, row=4)
        assert numpy.array_equal(u, before) and colors == cm(u, row=4)
        indices = numpy.rint(5999 * u).astype(int)
        exact = numpy.frombuffer(colors, numpy.uint8).reshape(-1, 3) \
            == cm.rgb[indices]
        assert exact.all(axis=1).mean() > 0.9


class TestBadInput:

    def arguments(self, **changes):
        Nx, nRows, km = 4, 2, 20
        arguments = dict(
            out=numpy.zeros((nRows, 1 + 3 * Nx), numpy.uint8),
            x=numpy.linspace(-2, 0.5, Nx), ci=numpy.array([0.5, -0.5]),
            qd=0.01, km=km, utable=kernel.valueTable(km + 1),
            cmap=kernel.colorTable(), noiseScale=kernel.NOISE_SCALE, row0=0)
        arguments.update(changes)
        return arguments

    @pytest.mark.parametrize("module", TWINS)
    @pytest.mark.parametrize("changes, error, match", [
        (dict(out=numpy.zeros((2, 13), numpy.float64)), TypeError, "uint8"),
        (dict(out=numpy.zeros((3, 13), numpy.uint8)), ValueError, "shape"),
        (dict(out=numpy.zeros((2, 12), numpy.uint8)), ValueError, "shape"),
        (dict(out=numpy.zeros((13, 2), numpy.uint8).T), ValueError,
         "contiguous"),
        (dict(out=bytes(26)), ValueError, "shape"),
        (dict(x=numpy.arange(4)), TypeError, "float64"),
        (dict(x=numpy.zeros((2, 2))), ValueError, "one-dimensional"),
        (dict(ci=[0.5, "a"]), TypeError, "float64"),
        (dict(km=0), ValueError, "km"),
        (dict(km=2.5), TypeError, "integer"),
        (dict(utable=numpy.zeros(5)), ValueError, "5\\*km\\+1"),
        (dict(cmap=numpy.zeros((6000, 4), numpy.uint8)), ValueError, "cmap"),
        (dict(cmap=numpy.zeros((6000, 3))), TypeError, "cmap"),
        (dict(row0=-1), ValueError, "rows"),
        (dict(row0=2 ** 32), ValueError, "rows"),
    ])
    def test_renderRows(self, module, changes, error, match):
        with pytest.raises(error, match=match):
            module.renderRows(**self.arguments(**changes))

    @pytest.mark.parametrize("module", TWINS)
    def test_readOnlyOut(self, module):
        out = numpy.zeros((2, 13), numpy.uint8)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="writable"):
            module.renderRows(**self.arguments(out=out))

    @pytest.mark.parametrize("module", TWINS)
    def test_otherFunctions(self, module):
        with pytest.raises(ValueError, match="km"):
            module.evalPoint(0.1, 0.1, -3)
        with pytest.raises(TypeError):
            module.evalPoint(None, 0.1, 10)
        with pytest.raises(ValueError, match="same length"):
            module.escapeIterations(numpy.zeros(3), numpy.zeros(4), 10)
        with pytest.raises(ValueError, match="maxIter"):
            module.escapeIterations(numpy.zeros(3), numpy.zeros(3), 0)
        with pytest.raises(TypeError, match="float64"):
            module.computeValues(numpy.zeros(3, numpy.float32), 0.1, 0.1, 5)

    def test_tablesAndBands(self):
        with pytest.raises(ValueError, match="steepness"):
            kernel.valueTable(100, 0)
        with pytest.raises(ValueError, match="N_values"):
            kernel.valueTable(1)
        with pytest.raises(ValueError, match="image of 40 x 30"):
            kernel.renderBand(numpy.zeros((5, 121), numpy.uint8),
                              *DEFAULT_VIEW, 26, 100)
        with pytest.raises(ValueError, match="x holds"):
            MandelbrotValuer(100).computeValues(3, numpy.zeros(4), 0.0, 0.1)
