"""
The Mandelbrot kernel on one core. Iterations/s of the plain escape loop on
one grid: ours (the engine of the real kernel: a short scalar start, then 8
points at a time in SSE2 vector lanes, refilled as points escape) against
the same loop in C compiled here with gcc -O3 (one point after the other,
and 8 points in lockstep left to gcc's vectorizer), numba and vectorised
numpy. And pixels/s of the full kernel (bulb, cardioid, periodicity,
5-point X, colours), compiled against its numpy twin.
"""
import ctypes
import shutil
import subprocess

import numpy
import pytest

from mcmandelbrot import kernel, purekernel

try:
    from mcmandelbrot import _kernel as compiledKernel
except ImportError:
    compiledKernel = None

needsCompiled = pytest.mark.skipif(
    compiledKernel is None,
    reason="mcmandelbrot._kernel is not built (setup.py build_ext)")

#: 0.9's default picture: ``mcmandelbrot 2000 -0.630 0 1.4 1.2``.
DEFAULT_VIEW = (-0.630 - 1.4, -0.630 + 1.4, 1.2, -1.2)

C_SOURCE = r"""
#include <stdint.h>

/* The plain escape loop, one point after the other. */
int64_t escape_iterations(const double *cr, const double *ci, int64_t n,
                          int max_iter) {
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        double c_r = cr[i], c_i = ci[i], zr = c_r, zi = c_i;
        int k = 1;
        while (k < max_iter) {
            double zr2 = zr * zr, zi2 = zi * zi;
            if (zr2 + zi2 > 16.0)
                break;
            zi = 2.0 * zr * zi + c_i;
            zr = zr2 - zi2 + c_r;
            k++;
        }
        total += k - 1;
    }
    return total;
}

/* The same loop on 8 points in lockstep, left to gcc to vectorize: a
   block runs until all 8 escaped, checking every 16 iterations. */
int64_t escape_iterations_lanes(const double *cr, const double *ci,
                                int64_t n, int max_iter) {
    int64_t total = 0, b;
    for (b = 0; b + 8 <= n; b += 8) {
        double zr[8], zi[8];
        int64_t count[8], alive[8], any;
        int l, k = 1, s, steps;
        for (l = 0; l < 8; l++) {
            zr[l] = cr[b + l];
            zi[l] = ci[b + l];
            count[l] = alive[l] = 1;
        }
        while (k < max_iter) {
            steps = max_iter - k < 16 ? max_iter - k : 16;
            for (s = 0; s < steps; s++)
                for (l = 0; l < 8; l++) {
                    double zr2 = zr[l] * zr[l], zi2 = zi[l] * zi[l];
                    alive[l] &= !(zr2 + zi2 > 16.0);
                    count[l] += alive[l];
                    zi[l] = 2.0 * zr[l] * zi[l] + ci[b + l];
                    zr[l] = zr2 - zi2 + cr[b + l];
                }
            k += steps;
            for (any = 0, l = 0; l < 8; l++)
                any |= alive[l];
            if (!any)
                break;
        }
        for (l = 0; l < 8; l++)
            total += count[l] - 1;
    }
    return total + escape_iterations(cr + b, ci + b, n - b, max_iter);
}
"""


def grid(Nx, Ny):
    """cr and ci of every pixel of the default view, row by row."""
    crMin, crMax, ciTop, ciBottom = DEFAULT_VIEW
    cr = numpy.tile(numpy.linspace(crMin, crMax, Nx), Ny)
    ci = numpy.repeat(numpy.linspace(ciTop, ciBottom, Ny), Nx)
    return cr, ci


@pytest.fixture(scope="module")
def escapeWork(quick):
    """(cr, ci, maxIter, iterations) of the escape-loop group."""
    cr, ci = grid(40, 30) if quick else grid(400, 300)
    maxIter = 50 if quick else 500
    return cr, ci, maxIter, purekernel.escapeIterations(cr, ci, maxIter)


@pytest.fixture(scope="module")
def cLibrary(tmp_path_factory):
    """C_SOURCE, compiled with gcc -O3 (generic x86-64) and loaded."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    folder = tmp_path_factory.mktemp("cloop")
    source, library = folder / "escape.c", folder / "escape.so"
    source.write_text(C_SOURCE)
    subprocess.run(["gcc", "-O3", "-shared", "-fPIC", "-o", str(library),
                    str(source)], check=True)
    return ctypes.CDLL(str(library))


def cLoop(library, name):
    """The C function ``name`` as loop(cr, ci, maxIter)."""
    function = getattr(library, name)
    function.restype = ctypes.c_int64
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                         ctypes.c_int]
    return lambda cr, ci, maxIter: function(
        cr.ctypes.data, ci.ctypes.data, cr.shape[0], maxIter)


@pytest.fixture(scope="module")
def numbaLoop():
    """The same loop under numba's @njit, compiled before timing."""
    numba = pytest.importorskip("numba", reason="numba is not installed")

    @numba.njit(cache=False)
    def escapeIterations(cr, ci, maxIter):
        total = 0
        for i in range(cr.shape[0]):
            c_r, c_i = cr[i], ci[i]
            zr, zi, k = c_r, c_i, 1
            while k < maxIter:
                zr2, zi2 = zr * zr, zi * zi
                if zr2 + zi2 > 16.0:
                    break
                zi = 2.0 * zr * zi + c_i
                zr = zr2 - zi2 + c_r
                k += 1
            total += k - 1
        return total

    escapeIterations(numpy.zeros(1), numpy.zeros(1), 2)
    return escapeIterations


def timeLoop(benchmark, record, escapeWork, loop, name, rounds):
    """Benchmark ``loop(cr, ci, maxIter)``, check that it executed the same
    iterations as the others, and note its iterations/s."""
    cr, ci, maxIter, iterations = escapeWork
    totals = []
    record(lambda: totals.append(loop(cr, ci, maxIter)), name, rounds=rounds)
    assert set(totals) == {iterations}
    benchmark.extra_info["iterations"] = iterations
    benchmark.extra_info["M iterations/s"] = round(
        iterations / benchmark.stats.stats.median / 1e6, 1)


GROUP_ESCAPE = "mcm kernel: escape loop, 1 core"


@needsCompiled
@pytest.mark.benchmark(group=GROUP_ESCAPE)
def test_escapeCompiled(benchmark, record, escapeWork):
    timeLoop(benchmark, record, escapeWork, compiledKernel.escapeIterations,
             "asynqueue", rounds=15)


@pytest.mark.benchmark(group=GROUP_ESCAPE)
def test_escapeC(benchmark, record, escapeWork, cLibrary):
    timeLoop(benchmark, record, escapeWork,
             cLoop(cLibrary, "escape_iterations"), "gcc -O3 C", rounds=15)


@pytest.mark.benchmark(group=GROUP_ESCAPE)
def test_escapeCLanes(benchmark, record, escapeWork, cLibrary):
    timeLoop(benchmark, record, escapeWork,
             cLoop(cLibrary, "escape_iterations_lanes"), "gcc -O3 C 8 lanes",
             rounds=15)


@pytest.mark.benchmark(group=GROUP_ESCAPE)
def test_escapeNumba(benchmark, record, escapeWork, numbaLoop):
    timeLoop(benchmark, record, escapeWork, numbaLoop, "numba njit",
             rounds=15)


@pytest.mark.benchmark(group=GROUP_ESCAPE)
def test_escapeNumpy(benchmark, record, escapeWork):
    timeLoop(benchmark, record, escapeWork, purekernel.escapeIterations,
             "numpy active set", rounds=5)


GROUP_RENDER = "mcm kernel: renderRows, 1 core"


@pytest.fixture(scope="module")
def renderWork(quick):
    """The arguments of renderRows for the default view at -N 2000."""
    Nx, Ny, N_values = (40, 30, 200) if quick else (400, 300, 2000)
    crMin, crMax, ciTop, ciBottom = DEFAULT_VIEW
    out = numpy.zeros((Ny, 1 + 3 * Nx), dtype=numpy.uint8)
    return (out, numpy.linspace(crMin, crMax, Nx),
            numpy.linspace(ciTop, ciBottom, Ny), 0.25 * (crMax - crMin) / Nx,
            N_values - 1, kernel.valueTable(N_values), kernel.colorTable(),
            kernel.NOISE_SCALE, 0)


def timeRender(benchmark, record, renderWork, module, name, rounds):
    """Benchmark ``module.renderRows`` and note its pixels/s."""
    record(lambda: module.renderRows(*renderWork), name, rounds=rounds)
    out = renderWork[0]
    pixels = out.shape[0] * (out.shape[1] - 1) // 3
    benchmark.extra_info["M pixels/s"] = round(
        pixels / benchmark.stats.stats.median / 1e6, 3)


@needsCompiled
@pytest.mark.benchmark(group=GROUP_RENDER)
def test_renderCompiled(benchmark, record, renderWork):
    timeRender(benchmark, record, renderWork, compiledKernel, "asynqueue",
               rounds=10)


@pytest.mark.benchmark(group=GROUP_RENDER)
def test_renderNumpy(benchmark, record, renderWork):
    timeRender(benchmark, record, renderWork, purekernel, "numpy twin",
               rounds=3)
