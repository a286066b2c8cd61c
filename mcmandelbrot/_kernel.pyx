# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""
The Mandelbrot escape-time kernel of mcmandelbrot, compiled: 0.9's
``eval_point`` (bulb and cardioid tests, periodicity check), the 5-point X
anti-aliasing and the colour lookup, run over a band of PNG scanlines with
the GIL released. Its twin ``mcmandelbrot.purekernel`` gives identical bytes
(the build never contracts a*b+c into an FMA) and checks the arguments of
both.

Speed: each point runs alone for PREFIX iterations (most escape by then);
the others are iterated MCM_LANES at a time in SSE2 vectors, a lane taking
the next waiting point as soon as its own ends, so the early exits stay.
Every lane does the scalar loop's operations in the same order, so the
counts are those of the scalar loop. Lanes look for cycles on their own
schedule: an exactly repeating z never escapes, so when a cycle is found
changes no count, only how soon the point ends.
"""
from libc.math cimport rint
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from libc.stdint cimport uint64_t, int64_t

import numpy

from mcmandelbrot.purekernel import (
    _checkIterations, _checkPairs, _checkRender, _checkVector)

__all__ = ["evalPoint", "computeValues", "renderRows", "escapeIterations"]

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* Escape radius 4, compared with |z|^2 as 0.9 did. */
    #define ESCAPE_SQUARED 16.0
    /* Points iterated side by side by mcm_lanes_step. */
    #define MCM_LANES 8

    /*
     * MCM_LANES points, `steps` iterations in lockstep: the escape test,
     * z = z^2 + c (the same operations, in the same order, as the scalar
     * loop), and with `check_cycles`, every 4th step, whether z came back
     * to the lane's saved z. `alive` and `closed` are 0 or 1 per lane; a
     * lane whose point escaped stops counting (its z goes on, unused).
     * With GCC or Clang the lanes are SSE2 vectors; elsewhere (or built
     * with -DMCM_PORTABLE_LANES) plain loops.
     */
    #if defined(__GNUC__) && !defined(MCM_PORTABLE_LANES)
    typedef double mcm_doubles __attribute__((vector_size(16)));
    typedef int64_t mcm_masks __attribute__((vector_size(16)));
    #define MCM_VECTORS (MCM_LANES / 2)

    static inline void mcm_lanes_step(
            double *zr_, double *zi_, const double *cr_, const double *ci_,
            const double *saved_r_, const double *saved_i_,
            int64_t *count_, int64_t *alive_, int64_t *closed_,
            int steps, int check_cycles) {
        mcm_doubles zr[MCM_VECTORS], zi[MCM_VECTORS], cr[MCM_VECTORS],
            ci[MCM_VECTORS], saved_r[MCM_VECTORS], saved_i[MCM_VECTORS];
        mcm_masks count[MCM_VECTORS], alive[MCM_VECTORS],
            closed[MCM_VECTORS];
        const mcm_doubles escape = {ESCAPE_SQUARED, ESCAPE_SQUARED};
        const mcm_doubles two = {2.0, 2.0};
        int step, v;
        memcpy(zr, zr_, sizeof zr);
        memcpy(zi, zi_, sizeof zi);
        memcpy(cr, cr_, sizeof cr);
        memcpy(ci, ci_, sizeof ci);
        memcpy(saved_r, saved_r_, sizeof saved_r);
        memcpy(saved_i, saved_i_, sizeof saved_i);
        memcpy(count, count_, sizeof count);
        memcpy(alive, alive_, sizeof alive);
        memcpy(closed, closed_, sizeof closed);
        for (v = 0; v < MCM_VECTORS; v++) {
            alive[v] = -alive[v];
            closed[v] = -closed[v];
        }
        for (step = 0; step < steps; step++) {
            for (v = 0; v < MCM_VECTORS; v++) {
                mcm_doubles zr2 = zr[v] * zr[v], zi2 = zi[v] * zi[v];
                alive[v] &= ~(zr2 + zi2 > escape);
                count[v] -= alive[v];
                zi[v] = two * zr[v] * zi[v] + ci[v];
                zr[v] = zr2 - zi2 + cr[v];
            }
            if (check_cycles && (step & 3) == 3)
                for (v = 0; v < MCM_VECTORS; v++)
                    closed[v] |= alive[v] & (zr[v] == saved_r[v])
                        & (zi[v] == saved_i[v]);
        }
        for (v = 0; v < MCM_VECTORS; v++) {
            alive[v] = -alive[v];
            closed[v] = -closed[v];
        }
        memcpy(zr_, zr, sizeof zr);
        memcpy(zi_, zi, sizeof zi);
        memcpy(count_, count, sizeof count);
        memcpy(alive_, alive, sizeof alive);
        memcpy(closed_, closed, sizeof closed);
    }
    #else
    static inline void mcm_lanes_step(
            double *zr, double *zi, const double *cr, const double *ci,
            const double *saved_r, const double *saved_i,
            int64_t *count, int64_t *alive, int64_t *closed,
            int steps, int check_cycles) {
        int step, lane;
        for (step = 0; step < steps; step++) {
            for (lane = 0; lane < MCM_LANES; lane++) {
                double zr2 = zr[lane] * zr[lane], zi2 = zi[lane] * zi[lane];
                alive[lane] &= !(zr2 + zi2 > ESCAPE_SQUARED);
                count[lane] += alive[lane];
                zi[lane] = 2.0 * zr[lane] * zi[lane] + ci[lane];
                zr[lane] = zr2 - zi2 + cr[lane];
            }
            if (check_cycles && (step & 3) == 3)
                for (lane = 0; lane < MCM_LANES; lane++)
                    closed[lane] |= alive[lane] & (zr[lane] == saved_r[lane])
                        & (zi[lane] == saved_i[lane]);
        }
    }
    #endif
    """
    const double ESCAPE_SQUARED
    enum: MCM_LANES
    void mcm_lanes_step(
        double *zr, double *zi, const double *cr, const double *ci,
        const double *saved_r, const double *saved_i, int64_t *count,
        int64_t *alive, int64_t *closed, int steps,
        bint check_cycles) noexcept nogil


cdef inline bint in_bulb_or_cardioid(double cr, double ci) noexcept nogil:
    """True when c lies in the period-2 bulb or the main cardioid."""
    cdef double q
    if (cr + 1.0) * (cr + 1.0) + ci * ci < 0.0625:
        return True
    q = (cr - 0.25) * (cr - 0.25) + ci * ci
    return q * (q + cr - 0.25) < ci * ci / 4.0


cdef inline int64_t dither_step(uint64_t row, uint64_t column) noexcept nogil:
    """The integer noise of a pixel: splitmix64 of its position, the four
    16-bit fields summed and centred."""
    cdef uint64_t z = ((row << 32) | column) + 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    z ^= z >> 31
    return <int64_t>((z & 0xFFFF) + ((z >> 16) & 0xFFFF)
                     + ((z >> 32) & 0xFFFF) + (z >> 48)) - 131070


cdef enum:
    # Most iterations the lanes run between two refills (measured best of
    # 16, 32 and 64 on the default view and on zooms).
    CHUNK = 32
    # Iterations a point runs alone before it queues for a lane: most
    # points escape by then (measured best of 4, 8, 16 and 32).
    PREFIX = 8
    # Pixels (or points) handled as one group, so that memory stays small.
    GROUP = 8192


cdef struct Queue:
    # Points still running after PREFIX iterations, waiting for a lane:
    # c, z, count (k so far) and where the final count goes.
    Py_ssize_t size
    double *cr
    double *ci
    double *zr
    double *zi
    int64_t *count
    Py_ssize_t *origin


cdef int queue_open(Queue *queue, Py_ssize_t capacity) noexcept nogil:
    """Allocate a queue for ``capacity`` points; -1 if out of memory."""
    queue.size = 0
    queue.cr = <double *>malloc(4 * capacity * sizeof(double) + 1)
    queue.count = <int64_t *>malloc(capacity * sizeof(int64_t) + 1)
    queue.origin = <Py_ssize_t *>malloc(capacity * sizeof(Py_ssize_t) + 1)
    if queue.cr == NULL or queue.count == NULL or queue.origin == NULL:
        queue_close(queue)
        return -1
    queue.ci = queue.cr + capacity
    queue.zr = queue.ci + capacity
    queue.zi = queue.zr + capacity
    return 0


cdef void queue_close(Queue *queue) noexcept nogil:
    free(queue.cr)
    free(queue.count)
    free(queue.origin)
    queue.cr = NULL
    queue.count = NULL
    queue.origin = NULL


cdef inline int start_point(double cr, double ci, int km, bint periodicity,
                            Queue *queue, Py_ssize_t origin) noexcept nogil:
    """
    SPEC §4.3 ``eval_point`` (the plain escape loop without
    ``periodicity``) run for at most PREFIX iterations: its count if the
    point ended by then, else 0 with the point queued for a lane.
    """
    cdef double zr = cr, zi = ci, zr2, zi2
    cdef double saved_r = 0.0, saved_i = 0.0
    cdef int k = 1, k_check = 0, n_check = 3, k_update = 0
    cdef int limit = km if queue == NULL else min(km, <int>PREFIX + 1)
    cdef Py_ssize_t i
    while k < limit:
        zr2 = zr * zr
        zi2 = zi * zi
        if zr2 + zi2 > ESCAPE_SQUARED:
            return k
        zi = 2.0 * zr * zi + ci
        zr = zr2 - zi2 + cr
        k += 1
        if periodicity:
            if zr == saved_r and zi == saved_i:
                return km
            if k_check == n_check:
                saved_r = zr
                saved_i = zi
                k_check = 0
                if k_update == 5:
                    k_update = 0
                    n_check *= 2
                k_update += 1
            k_check += 1
    if k >= km:
        return k
    i = queue.size
    queue.cr[i], queue.ci[i], queue.zr[i], queue.zi[i] = cr, ci, zr, zi
    queue.count[i] = k
    queue.origin[i] = origin
    queue.size = i + 1
    return 0


cdef int eval_point(double cr, double ci, int km) noexcept nogil:
    """SPEC §4.3 ``eval_point``: the escape count of c, or km."""
    if in_bulb_or_cardioid(cr, ci):
        return km
    return start_point(cr, ci, km, True, NULL, 0)


cdef struct Lanes:
    # The points in the lanes, each with its own k (count) and, with
    # periodicity, its own saved z, saved when its chunks reach 1, 2, 4...
    double zr[MCM_LANES]
    double zi[MCM_LANES]
    double cr[MCM_LANES]
    double ci[MCM_LANES]
    double saved_r[MCM_LANES]
    double saved_i[MCM_LANES]
    int64_t count[MCM_LANES]
    int64_t alive[MCM_LANES]
    int64_t chunks[MCM_LANES]
    int64_t closed[MCM_LANES]
    Py_ssize_t origin[MCM_LANES]


cdef inline void lane_load(Lanes *lanes, int lane, Queue *queue,
                           Py_ssize_t i) noexcept nogil:
    """Put queued point ``i`` in ``lane``, or a dead point if none."""
    if i < queue.size:
        lanes.cr[lane], lanes.ci[lane] = queue.cr[i], queue.ci[i]
        lanes.zr[lane], lanes.zi[lane] = queue.zr[i], queue.zi[i]
        lanes.count[lane] = queue.count[i]
        lanes.origin[lane] = queue.origin[i]
        lanes.alive[lane] = 1
    else:
        lanes.cr[lane] = lanes.ci[lane] = lanes.zr[lane] = lanes.zi[lane] = 0
        lanes.count[lane] = lanes.alive[lane] = 0
        lanes.origin[lane] = -1
    lanes.saved_r[lane] = lanes.zr[lane]
    lanes.saved_i[lane] = lanes.zi[lane]
    lanes.chunks[lane] = lanes.closed[lane] = 0


cdef void run_queue(Queue *queue, int km, bint periodicity,
                    int64_t *counts) noexcept nogil:
    """
    Run every queued point to its end in MCM_LANES lanes, each lane taking
    the next point as soon as its own ends, and write counts[origin] = its
    count: k at escape, or km (k reached km, or with ``periodicity`` a
    cycle: z came back to the z saved after the lane's 1st, 2nd, 4th...
    chunk).
    """
    cdef Lanes lanes
    cdef Py_ssize_t next_point = 0
    cdef int lane, steps
    cdef bint busy = True
    for lane in range(MCM_LANES):
        lane_load(&lanes, lane, queue, next_point)
        next_point += 1
    while busy:
        steps = CHUNK
        for lane in range(MCM_LANES):
            if lanes.alive[lane]:
                steps = min(steps, <int>(km - lanes.count[lane]))
        mcm_lanes_step(lanes.zr, lanes.zi, lanes.cr, lanes.ci, lanes.saved_r,
                       lanes.saved_i, lanes.count, lanes.alive, lanes.closed,
                       steps, periodicity)
        busy = False
        for lane in range(MCM_LANES):
            if lanes.origin[lane] < 0:
                continue
            if lanes.closed[lane]:
                lanes.count[lane] = km
            elif lanes.alive[lane] and lanes.count[lane] < km:
                busy = True
                lanes.chunks[lane] += 1
                if lanes.chunks[lane] & (lanes.chunks[lane] - 1) == 0:
                    lanes.saved_r[lane] = lanes.zr[lane]
                    lanes.saved_i[lane] = lanes.zi[lane]
                continue
            counts[lanes.origin[lane]] = lanes.count[lane]
            lane_load(&lanes, lane, queue, next_point)
            next_point += 1
            busy = busy or lanes.alive[lane]
    queue.size = 0


cdef void five_point_values(
        const double *x, Py_ssize_t nx, const double *ci, Py_ssize_t rows,
        double qd, int km, Queue *queue, int64_t *values,
        int64_t *counts) noexcept nogil:
    """
    values[r*nx + j] = the 5-point X value of pixel (x[j], ci[r]): each of
    the five points in turn, for the pixels still open (no escape-free
    point so far), so that the short cuts stay.
    """
    cdef double dr[5]
    cdef double di[5]
    cdef double point_r, point_i
    cdef Py_ssize_t row, j, pixel, n = nx * rows
    cdef int which, count
    dr[0], dr[1], dr[2], dr[3], dr[4] = 0.0, -qd, -qd, qd, qd
    di[0], di[1], di[2], di[3], di[4] = 0.0, -qd, qd, -qd, qd
    for pixel in range(n):
        values[pixel] = 0
    for which in range(5):
        for row in range(rows):
            for j in range(nx):
                pixel = row * nx + j
                if values[pixel] < 0:
                    continue
                point_r, point_i = x[j], ci[row]
                if which:
                    point_r, point_i = point_r + dr[which], point_i + di[which]
                if in_bulb_or_cardioid(point_r, point_i):
                    counts[pixel] = km
                    continue
                count = start_point(point_r, point_i, km, True, queue, pixel)
                if count:
                    counts[pixel] = count
        run_queue(queue, km, True, counts)
        for pixel in range(n):
            if values[pixel] >= 0:
                values[pixel] = -1 if counts[pixel] == km \
                    else values[pixel] + counts[pixel]
    for pixel in range(n):
        if values[pixel] < 0:
            values[pixel] = 5 * km


cdef int render_rows(
        unsigned char[:, ::1] out, const double[::1] x, const double[::1] ci,
        double qd, int km, const double[::1] utable,
        const unsigned char[:, ::1] cmap, double noise_scale,
        uint64_t row0) noexcept nogil:
    """Fill the scanlines: filter byte 0, then RGB of each pixel, a group
    of rows at a time; -1 if out of memory."""
    cdef Py_ssize_t nx = x.shape[0], group = max(1, GROUP // max(nx, 1))
    cdef Py_ssize_t part, first, row, column, color, rows
    cdef double u, j_max = <double>(cmap.shape[0] - 1)
    cdef unsigned char *pixel
    cdef int64_t *values = <int64_t *>malloc(2 * group * nx * sizeof(int64_t) + 1)
    cdef Queue queue
    if values == NULL or queue_open(&queue, group * nx) < 0:
        free(values)
        return -1
    for part in range((out.shape[0] + group - 1) // group):
        first = part * group
        rows = min(group, out.shape[0] - first)
        if nx:
            five_point_values(&x[0], nx, &ci[first], rows, qd, km, &queue,
                              values, values + group * nx)
        for row in range(rows):
            out[first + row, 0] = 0
            pixel = &out[first + row, 0] + 1
            for column in range(nx):
                u = utable[values[row * nx + column]] + <double>dither_step(
                    row0 + first + row, column) * noise_scale
                if not u > 0.0:
                    u = 0.0
                elif u > 1.0:
                    u = 1.0
                color = <Py_ssize_t>rint(j_max * u)
                pixel[0] = cmap[color, 0]
                pixel[1] = cmap[color, 1]
                pixel[2] = cmap[color, 2]
                pixel += 3
    queue_close(&queue)
    free(values)
    return 0


cdef int64_t plain_escape(
        const double[::1] cr, const double[::1] ci, int max_iter) noexcept nogil:
    """The total iterations of the plain escape loop over all pairs, GROUP
    points at a time (each alone for PREFIX iterations, then in lanes); -1
    if out of memory."""
    cdef Py_ssize_t part, first, i, size, n = cr.shape[0]
    cdef int64_t total = 0
    cdef int count
    cdef Queue queue
    cdef int64_t *counts = <int64_t *>malloc(GROUP * sizeof(int64_t))
    if counts == NULL or queue_open(&queue, GROUP) < 0:
        free(counts)
        return -1
    for part in range((n + GROUP - 1) // GROUP):
        first = part * GROUP
        for i in range(first, min(n, first + GROUP)):
            count = start_point(cr[i], ci[i], max_iter, False, &queue,
                                queue.size)
            total += count - 1 if count else 0
        size = queue.size
        run_queue(&queue, max_iter, False, counts)
        for i in range(size):
            total += counts[i] - 1
    queue_close(&queue)
    free(counts)
    return total


def evalPoint(cr, ci, km):
    """The escape count of c = cr + i*ci, or ``km`` if it never escapes."""
    cdef double c_r = float(cr), c_i = float(ci)
    cdef int limit = _checkIterations(km)
    return eval_point(c_r, c_i, limit)


def computeValues(x, ci, qd, km):
    """The 5-point X values Z (int64) of the pixels (x[j], ci)."""
    x = _checkVector(x, "x")
    cdef int limit = _checkIterations(km)
    cdef double c_i = float(ci), spacing = float(qd)
    cdef const double[::1] xs = x
    cdef Py_ssize_t n = xs.shape[0]
    values = numpy.zeros(n, dtype=numpy.int64)
    if not n:
        return values
    cdef int64_t[::1] z = values
    cdef int64_t[::1] counts = numpy.empty(n, dtype=numpy.int64)
    cdef Queue queue
    if queue_open(&queue, n) < 0:
        raise MemoryError("no memory for a row of {:d} pixels".format(n))
    with nogil:
        five_point_values(&xs[0], n, &c_i, 1, spacing, limit, &queue, &z[0],
                          &counts[0])
    queue_close(&queue)
    return values


def renderRows(out, x, ci, qd, km, utable, cmap, noiseScale, row0):
    """
    Write PNG scanlines into ``out`` (nRows, 1+3*Nx): filter byte 0, then
    the colour cmap[rint(jMax*clip(utable[Z] + d*noiseScale))] of each
    pixel, where Z is its 5-point X value and d its position's dither step.
    The whole band runs with the GIL released.
    """
    checked = _checkRender(out, x, ci, qd, km, utable, cmap, noiseScale, row0)
    cdef unsigned char[:, ::1] rows = checked[0]
    cdef const double[::1] xs = checked[1], cis = checked[2]
    cdef double spacing = checked[3], noise_scale = checked[7]
    cdef int limit = checked[4]
    cdef const double[::1] table = checked[5]
    cdef const unsigned char[:, ::1] colors = checked[6]
    cdef uint64_t first = checked[8]
    cdef int status
    with nogil:
        status = render_rows(rows, xs, cis, spacing, limit, table, colors,
                             noise_scale, first)
    if status < 0:
        raise MemoryError("no memory to render rows of {:d} pixels".format(
            xs.shape[0]))


def escapeIterations(cr, ci, maxIter):
    """
    The total number of iterations of the plain escape loop (|z|² > 16, no
    bulb, cardioid or periodicity test) over every pair (cr[i], ci[i]).
    """
    cr, ci = _checkPairs(cr, ci)
    cdef int limit = _checkIterations(maxIter, "maxIter")
    cdef const double[::1] real = cr, imaginary = ci
    cdef int64_t total
    with nogil:
        total = plain_escape(real, imaginary, limit)
    if total < 0:
        raise MemoryError("no memory for the escape loop")
    return total
