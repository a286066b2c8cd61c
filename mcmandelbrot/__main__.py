"""``python -m mcmandelbrot`` runs the ``mcm`` command."""
from .main import main

main()
