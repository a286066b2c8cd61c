"""
The benchmark suite runs, at tiny sizes (``--quick``), so that it never
rots between the runs that measure with it; and the report is written
from what it measured.
"""
import json
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


def benchmarkEntry(group, name, median, **info):
    """One benchmark of pytest-benchmark's JSON, as report.py reads it."""
    return {"group": group, "stats": {"median": median},
            "extra_info": dict(info, contender=name)}


def test_reportJoinsPartsOfOneRun(tmp_path):
    """A suite run in parts (on another machine) reports as one run: every
    part's groups, that machine's CPU and cores, the day it ran, and the
    plots named after the page."""
    workers = "mcm 2000x1600 -N 2000, workers"
    parts = [
        {"datetime": "2026-01-02T03:04:05+00:00",
         "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 64},
                          "python_version": "3.99.1", "system": "Linux"},
         "benchmarks": [
             benchmarkEntry(workers, "1 worker", 1.0),
             benchmarkEntry(workers, "asynqueue", 0.5, paired_speedup=1.9),
             benchmarkEntry(workers, "4 workers", 0.25,
                            paired_speedup=3.8)]},
        {"benchmarks": [
            benchmarkEntry("tiny calls, all at once", "asynqueue", 0.1),
            benchmarkEntry("tiny calls, all at once", "ProcessPoolExecutor",
                           0.4)]}]
    paths = []
    for k, part in enumerate(parts):
        paths.append(str(tmp_path / "part{}.json".format(k)))
        with open(paths[-1], "w") as fh:
            json.dump(part, fh)
    page = tmp_path / "bigger.md"
    subprocess.run(
        [sys.executable, "benchmarks/report.py", "--json", *paths,
         "-o", str(page)], cwd=ROOT, check=True, capture_output=True,
        timeout=120)
    text = page.read_text()
    assert "Measured 2026-01-02 on Test CPU, 64 cores, Python 3.99.1" in text
    assert "(run in 2 parts, one FILE each)" in text
    assert "| 4 workers | 250 ms | 2.00x slower | 3.80x a 1-worker" in text
    assert "| ProcessPoolExecutor | 400 ms | 4.00x faster |" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert "![mcm speedup by workers](bigger-workers.png)" in text
    assert (tmp_path / "bigger-workers.png").exists()
