"""Prints Illumina's own `interop` summary of a run folder as JSON, for the cross-check test.

Usage: python tools/interop_summary.py RUN_FOLDER
"""
import json
import math
import sys

from interop import py_interop_run, py_interop_run_metrics, py_interop_summary


def number(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def main(folder):
    metrics = py_interop_run_metrics.run_metrics()
    valid = py_interop_run.uchar_vector(py_interop_run.MetricCount, 0)
    py_interop_run_metrics.list_summary_metrics_to_load(valid)
    try:
        metrics.read(folder, valid)
    except Exception as e:  # interop refuses inconsistent folders; report it, do not crash
        print(json.dumps({"error": str(e).splitlines()[0]}))
        return
    summary = py_interop_summary.run_summary()
    py_interop_summary.summarize_run_metrics(metrics, summary)
    total = summary.total_summary()
    lanes = []
    for lane in range(summary.lane_count()):
        l = summary.at(0).at(lane)
        lanes.append({"lane": l.lane(), "density_per_mm2": number(l.density().mean()), "pct_pf": number(l.percent_pf().mean()),
                      "pct_occupied": number(l.percent_occupied().mean())})
    print(json.dumps({
        "yield_gbp": number(total.yield_g()),
        "pct_q30": number(total.percent_gt_q30()),
        "error_rate_pct": number(total.error_rate()),
        "first_cycle_intensity": number(total.first_cycle_intensity()),
        "lanes": lanes,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
