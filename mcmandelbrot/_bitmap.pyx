# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""
The Benchmarks Game mandelbrot kernel: rows of the P4 bitmap of the
N x N view [-1.5, 0.5] x [-1, 1], 50 iterations, escape at |z| > 2. Eight
pixels (one output byte) are iterated in lockstep so that the compiler
vectorises them, with a check every few iterations for a byte whose
pixels have all escaped; the bits equal those of the plain C program.
"""
from libc.stdint cimport uint8_t

__all__ = ["bitmapRows", "ITERATIONS"]

#: Iterations of the published task.
ITERATIONS = 50
cdef enum:
    # Iterations between two checks for a byte whose pixels all escaped.
    CHECK_EVERY = 5


cdef inline uint8_t octet(const double *cr, double ci, int iterations,
                          uint8_t mask) noexcept nogil:
    """The bits of 8 pixels ``cr[0..7] + ci*i``, first pixel highest."""
    cdef double zr[8]
    cdef double zi[8]
    cdef double tr[8]
    cdef double ti[8]
    cdef int i, j, k
    cdef bint alive
    cdef uint8_t bits = 0
    for j in range(8):
        zr[j] = zi[j] = tr[j] = ti[j] = 0.0
    i = 0
    while i < iterations:
        for k in range(CHECK_EVERY):
            for j in range(8):
                zi[j] = 2.0 * zr[j] * zi[j] + ci
                zr[j] = tr[j] - ti[j] + cr[j]
                tr[j] = zr[j] * zr[j]
                ti[j] = zi[j] * zi[j]
        i += CHECK_EVERY
        alive = False
        for j in range(8):
            alive |= tr[j] + ti[j] <= 4.0
        if not alive:
            return 0
    for j in range(8):
        bits = (bits << 1) | (tr[j] + ti[j] <= 4.0)
    return bits & mask


def bitmapRows(uint8_t[:, ::1] out not None, long y0, long N,
               int iterations=ITERATIONS):
    """
    Write rows ``y0 .. y0 + len(out) - 1`` of the N x N bitmap into
    ``out`` (``(N + 7) // 8`` bytes a row), with the GIL released.
    """
    cdef long rowBytes = (N + 7) // 8
    cdef long nRows = out.shape[0]
    cdef long b, j, y, x
    cdef double cr[8]
    cdef double ci
    cdef uint8_t mask
    if N < 1 or iterations < 0 or iterations % CHECK_EVERY:
        raise ValueError("need N >= 1 and iterations a multiple of "
                         "{}".format(CHECK_EVERY))
    if out.shape[1] != rowBytes or y0 < 0 or y0 + nRows > N:
        raise ValueError("out must be (rows, {}) bytes within the {} rows "
                         "of the image".format(rowBytes, N))
    with nogil:
        for y in range(nRows):
            ci = 2.0 * <double>(y0 + y) / N - 1.0
            for b in range(rowBytes):
                for j in range(8):
                    x = 8 * b + j
                    cr[j] = 2.0 * <double>x / N - 1.5
                mask = 0xFF
                if 8 * b + 8 > N:
                    mask = <uint8_t>(0xFF << (8 * b + 8 - N))
                out[y, b] = octet(cr, ci, iterations, mask)
