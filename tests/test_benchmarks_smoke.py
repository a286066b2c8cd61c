"""
The benchmark suite runs, at tiny sizes (``--quick``), so that it never
rots between the runs that measure with it; and the report is written
from what it measured.
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmarksRunQuickAndReport():
    with tempfile.TemporaryDirectory() as directory:
        measured = os.path.join(directory, "run.json")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "benchmarks", "--quick", "-q",
             "-x", "-p", "no:cacheprovider", "--benchmark-json", measured],
            cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        assert "asynqueue vs peers" in result.stdout
        page = os.path.join(directory, "performance.md")
        subprocess.run(
            [sys.executable, "benchmarks/report.py", "--json", measured,
             "-o", page], cwd=ROOT, check=True, capture_output=True,
            timeout=120)
        with open(page) as fh:
            text = fh.read()
    assert "### tiny calls, all at once" in text
    assert "| **asynqueue** |" in text and "x faster" in text
    assert "µs p90" in text
    assert "### tiny calls, all at once, garbage collection at chance" in text
    assert "a 1-worker render run just before each" in text
