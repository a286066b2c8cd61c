"""
The functions the benchmarks send to workers: importable by every peer's
worker processes, and trivial, so that what is measured is the transport.
"""


def inc(x):
    return x + 1


def negate(array):
    """A fresh array the size of the argument, so it travels both ways."""
    import numpy
    return numpy.negative(array)


def doubleInPlace(array):
    """Work on a SharedArray where it lies; nothing travels back."""
    import numpy
    numpy.multiply(array, 2, out=array)
