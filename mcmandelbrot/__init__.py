"""mcmandelbrot: multicore Mandelbrot renders through asynqueue (see its issue)."""
