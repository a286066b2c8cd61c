"""
Writes docs/performance.md: runs the benchmark suite (or reads the JSON of
an earlier ``pytest benchmarks/ --benchmark-json=FILE``), then tabulates
each group's contenders with their ratio to asynqueue and plots array
throughput against size and mcm's speedup against workers.

    python benchmarks/report.py                 # run the suite, then report
    python benchmarks/report.py --json run.json # report on an earlier run
    python benchmarks/report.py --json a.json b.json -o docs/other.md
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
ARRAY_GROUP = re.compile(r"float64 array (\d+) MB in and out")
WORKERS_GROUP = "mcm 2000x1600 -N 2000, workers"
US = "asynqueue"


def runSuite(jsonPath, extra):
    """Run ``pytest benchmarks/`` writing its JSON to ``jsonPath``; the
    command as typed."""
    command = [sys.executable, "-m", "pytest", "benchmarks",
               "--benchmark-json", jsonPath, "-q", *extra]
    subprocess.run(command, cwd=ROOT, check=True)
    return " ".join(["pytest benchmarks/", *extra])


def medians(data):
    """group -> contender -> (median seconds, extra_info)."""
    groups = {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        name = info.get("contender")
        if name is None:
            continue
        groups.setdefault(bench["group"], {})[name] = (
            bench["stats"]["median"], info)
    return groups


def machine(data):
    """A line naming the CPU, its cores and the Python of the machine that
    ran the suite (as pytest-benchmark recorded it), else of this one."""
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    model = cpu.get("brand_raw")
    if not model:
        try:
            with open("/proc/cpuinfo") as fh:
                model = next(line.split(":", 1)[1].strip() for line in fh
                             if line.startswith("model name"))
        except (OSError, StopIteration):
            model = platform.processor() or "unknown CPU"
    return "{}, {} cores, Python {}, {}".format(
        model, cpu.get("count") or os.cpu_count(),
        info.get("python_version") or platform.python_version(),
        info.get("system") or platform.system())


def measuredOn(data):
    """The day the suite ran, as pytest-benchmark recorded it (else
    today)."""
    return (data.get("datetime") or datetime.date.today().isoformat())[:10]


def timeText(seconds):
    """A duration with a unit that suits it."""
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return "{:.3g} {}".format(seconds / scale, unit)
    return "{:.3g} ns".format(seconds * 1e9)


def details(info):
    """What a benchmark noted besides its time (one call's round trip)."""
    if "median_us" in info:
        return "one call: {:.0f} µs median, {:.0f} µs p90".format(
            info["median_us"], info["p90_us"])
    if "paired_speedup" in info:
        return "{:.2f}x a 1-worker render run just before each".format(
            info["paired_speedup"])
    return ""


def tables(groups):
    """Markdown lines: one table per group with asynqueue in it."""
    lines = []
    for group in sorted(groups):
        contenders = groups[group]
        if US not in contenders:
            continue
        ours = contenders[US][0]
        noted = any(details(info) for _, info in contenders.values())
        lines += ["### " + group, "",
                  "| contender | median | asynqueue is |" +
                  (" details |" if noted else ""),
                  "|---|---|---|" + ("---|" if noted else "")]
        for name, (median, info) in sorted(
                contenders.items(), key=lambda item: item[1][0]):
            ratio = "" if name == US else "{:.2f}x faster".format(
                median / ours) if median >= ours else "{:.2f}x slower".format(
                    ours / median)
            lines.append("| {} | {} | {} |".format(
                "**{}**".format(name) if name == US else name,
                timeText(median), ratio) +
                (" {} |".format(details(info)) if noted else ""))
        lines.append("")
    return lines


def savePlot(path, lines, **axesOptions):
    """Save a PNG of ``lines``, each ``(points, plot keywords)``; False
    where matplotlib is not installed (it comes with the bench extra)."""
    try:
        import matplotlib
    except ImportError:
        print("no plots: matplotlib is not installed "
              "(pip install -e '.[bench]')", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot
    figure, axes = pyplot.subplots(figsize=(6, 4))
    for points, options in lines:
        axes.plot(*zip(*points), **options)
    axes.set(**axesOptions)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return True


def plotArrays(groups, path):
    """MiB/s (in and out) against array size, per contender; False if
    there is nothing to plot."""
    series = {}
    for group, contenders in groups.items():
        match = ARRAY_GROUP.fullmatch(group)
        if match:
            megabytes = int(match.group(1))
            for name, (median, _) in contenders.items():
                series.setdefault(name, []).append(
                    (megabytes, 2 * megabytes / median))
    if not series:
        return False
    lines = [(sorted(points), {"marker": "o", "label": name})
             for name, points in sorted(series.items())]
    return savePlot(path, lines, xscale="log", yscale="log",
                    xlabel="float64 array size (MB)",
                    ylabel="MiB/s, in and out",
                    title="Arrays to a worker and back, 2 workers")


def plotWorkers(groups, path):
    """mcm's speedup against its number of workers (paired with 1-worker
    renders where the run noted it, else a ratio of medians); False if
    not run."""
    contenders = groups.get(WORKERS_GROUP)
    if not contenders or "1 worker" not in contenders:
        return False
    points = []
    for name, (median, info) in contenders.items():
        workers = 2 if name == US else int(name.split()[0])
        points.append((workers, info.get(
            "paired_speedup", contenders["1 worker"][0] / median)))
    points.sort()
    top = points[-1][0]
    return savePlot(path, [(points, {"marker": "o", "label": "mcm"}),
                           ([(1, 1), (top, top)], {"linestyle": "--",
                                                   "color": "grey",
                                                   "label": "linear"})],
                    xlabel="worker processes",
                    ylabel="speedup over 1 worker",
                    title="mcm 2000x1600 -N 2000")


def report(data, command, directory=DOCS, plotPrefix="performance",
           parts=1):
    """The text of docs/performance.md, writing its plots into
    ``directory`` (where the page goes) as ``plotPrefix-arrays.png`` and
    ``plotPrefix-workers.png``; ``parts`` is the number of runs of
    ``command`` that measured it."""
    groups = medians(data)
    command = "`{}`".format(command)
    if parts > 1:
        command += " (run in {:d} parts, one FILE each)".format(parts)
    lines = [
        "# asynqueue performance", "",
        "Measured {} on {}.".format(
            measuredOn(data), machine(data)), "",
        "Command: {}, then `python benchmarks/report.py` wrote this "
        "page. Every group runs asynqueue and its peers on "
        "the same workload in the same run; ratios are of median times, "
        "so above 1 asynqueue is faster. Each round starts after a full "
        "garbage collection, untimed, so that a collection of the whole "
        "suite's heap (70-220 ms on a 2-core VM) does not land in some "
        "rounds and not others; the group \"garbage collection at "
        "chance\" shows tiny calls without it. Timings on shared "
        "machines vary by 20% or more from run to run.".format(command),
        ""]
    for name, plot, caption in (
            ("arrays", plotArrays, "Array throughput by size"),
            ("workers", plotWorkers, "mcm speedup by workers")):
        name = "{}-{}.png".format(plotPrefix, name)
        if plot(groups, os.path.join(directory, name)):
            lines += ["![{}]({})".format(caption, name), ""]
    return "\n".join(lines + tables(groups))


def load(paths):
    """The pytest-benchmark JSON of ``paths`` as one run: their benchmarks
    together, under the first one's machine (for a suite run in parts)."""
    data = None
    for path in paths:
        with open(path) as fh:
            part = json.load(fh)
        if data is None:
            data = part
        else:
            data["benchmarks"] += part["benchmarks"]
    return data


def main(args=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", nargs="+", metavar="FILE",
                   help="report on pytest-benchmark JSON (one file, or "
                   "several from parts of one run) instead of running the "
                   "suite")
    p.add_argument("--quick", action="store_true",
                   help="run the suite in its quick (smoke) mode")
    p.add_argument("-o", "--output",
                   default=os.path.join(DOCS, "performance.md"))
    ns = p.parse_args(args)
    directory = os.path.dirname(os.path.abspath(ns.output))
    os.makedirs(directory, exist_ok=True)
    if ns.json:
        paths, command = ns.json, "pytest benchmarks/ --benchmark-json FILE"
    else:
        paths = [os.path.join(tempfile.mkdtemp(), "benchmarks.json")]
        command = runSuite(paths[0], ["--quick"] if ns.quick else [])
    data = load(paths)
    plotPrefix = os.path.splitext(os.path.basename(ns.output))[0]
    with open(ns.output, "w") as fh:
        fh.write(report(data, command, directory, plotPrefix,
                        len(paths)) + "\n")
    print("wrote", ns.output)


if __name__ == "__main__":
    main()
