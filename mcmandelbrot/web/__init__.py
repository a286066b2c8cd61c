"""
The interactive Mandelbrot page of 0.9, served by twisted.web: ``mcm serve``
starts it, and every browser that opens it shares one Runner's workers.
``resources.makeSite(runner)`` builds the site and
``serve.MandelbrotService`` runs it, under twistd too. (Nothing is imported
here, so that ``mcmandelbrot.web.query`` stays free of twisted.web.)
"""
