"""
mcmandelbrot: high-resolution Mandelbrot PNGs rendered on every core
through an asynqueue ProcessQueue, with a Cython kernel.

    mcm -o mandelbrot.png 2000 -0.630 0 1.4 1.2
    mcm 2000 -0.630 0 1.4 1.2 | display
    mcm -o detail.png 3000 -0.73249 +0.21653 0.0112
"""
