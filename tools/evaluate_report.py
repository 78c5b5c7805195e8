#!/usr/bin/env python3
"""Merges the simulator sweep and the benchmark results into out/evaluate/latest.json, checks the
detection targets, and rewrites the generated section of docs/detection.md (between its
`<!-- evaluate:begin -->` and `<!-- evaluate:end -->` markers). With --check, exits 1 when a
target is missed. Standard library only."""
import argparse
import datetime
import json
import subprocess
import sys

TARGETS = {
    "recall": 1.0,
    "slow_lead_before_spec_h_median": 24.0,
    "slow_lead_before_spec_h_p10": 6.0,
    "part_right": 0.95,
    "false_alerts_per_instrument_month": 0.5,
}


def check(sim, quick=False):
    """Target misses. A quick sweep has one fault of a kind, too few for a median or a 10th
    percentile: there every slow fault must simply be alerted before its spec crossing."""
    misses = []
    slow = set(sim["slow_degradations"])
    for name, f in sim["per_fault"].items():
        if f["recall"] is None or f["recall"] < TARGETS["recall"]:
            misses.append(f"{name}: recall {f['recall']} < {TARGETS['recall']}")
        if f["part_right"] is None or f["part_right"] < TARGETS["part_right"]:
            misses.append(f"{name}: part_right {f['part_right']} < {TARGETS['part_right']}")
        if name in slow and quick:
            p10 = f["lead_before_spec_h_p10"]
            if p10 is None or p10 <= 0.0:
                misses.append(f"{name}: alerted {p10} h before its spec crossing")
        elif name in slow:
            med, p10 = f["lead_before_spec_h_median"], f["lead_before_spec_h_p10"]
            if med is None or med < TARGETS["slow_lead_before_spec_h_median"]:
                misses.append(f"{name}: median lead before spec {med} h < 24 h")
            if p10 is None or p10 < TARGETS["slow_lead_before_spec_h_p10"]:
                misses.append(f"{name}: p10 lead before spec {p10} h < 6 h")
    # Fleet attribution (our own target): a fleet cause is named by one alert, which lists the
    # instruments it hit.
    for name, c in sim.get("fleet_attribution", {}).items():
        if c["alerts_per_cause_median"] is None or c["alerts_per_cause_median"] > 1:
            misses.append(f"{name}: median {c['alerts_per_cause_median']} alerts per fleet cause > 1")
        listed = c["victims_listed_by_a_fleet_alert"]
        if listed is None or listed < 0.9:
            misses.append(f"{name}: {listed} of its instruments listed by a fleet alert < 0.9")
    fa = sim["false_alerts_per_instrument_month"]
    if fa is None or fa > TARGETS["false_alerts_per_instrument_month"]:
        misses.append(f"false alerts per instrument-month {fa} > 0.5")
    return misses


def fmt(x, digits=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def per_fault_table(per_fault, slow):
    rows = ["| fault | class | injected | recall | lead before spec, median h | p10 h | "
            "alerted before spec | first alert a forecast | lead before failure, median h | "
            "part right | maintenance due before spec |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in per_fault.items():
        rows.append(
            f"| {name}{' (slow)' if name in slow else ''} | {f['class']} | {f['injected']} | "
            f"{fmt(f['recall'], 3)} | {fmt(f['lead_before_spec_h_median'])} | "
            f"{fmt(f['lead_before_spec_h_p10'])} | {fmt(f['detected_before_spec'], 2)} | "
            f"{fmt(f['first_alert_from_forecast'], 2)} | "
            f"{fmt(f['lead_before_failure_h_median'])} | {fmt(f['part_right'], 3)} | "
            f"{fmt(f.get('maintenance_due_before_spec'), 2)} |")
    return "\n".join(rows)


def fleet_table(fleet):
    rows = ["| fleet cause | causes | instruments hit, median | alerts per cause, median | max | "
            "causes named by one alert | instruments listed by a fleet alert |",
            "|---|---|---|---|---|---|---|"]
    for name, c in fleet.items():
        rows.append(f"| {name} | {c['causes']} | {fmt(c['victims_per_cause_median'], 0)} | "
                    f"{fmt(c['alerts_per_cause_median'], 0)} | {fmt(c['alerts_per_cause_max'], 0)} | "
                    f"{c['causes_named_by_one_alert']} | {fmt(c['victims_listed_by_a_fleet_alert'], 3)} |")
    return "\n".join(rows)


def bench_table(bench):
    rows = ["| data | detector | rows | F1 | FAR % | MAR % | segments detected | median delay (rows) |",
            "|---|---|---|---|---|---|---|---|"]
    for key, label in (("skab", "SKAB (all 34 experiments)"),
                       ("ucr_and_mitbih", "UCR #135 + MIT-BIH excerpt")):
        r = bench.get(key, {})
        if "detector" not in r:
            rows.append(f"| {label} | skipped: {r.get('skipped', 'not run')} | | | | | | |")
            continue
        for who, s in (("anomaly-detector score", r["detector"]),
                       ("baseline: fixed mean ± 3 sd band", r["baseline_3sd_band"])):
            rows.append(f"| {label} | {who} | {s['rows']} | {fmt(s['f1'], 3)} | "
                        f"{fmt(s['far_pct'])} | {fmt(s['mar_pct'])} | "
                        f"{s['segments_detected']}/{s['segments']} | {fmt(s['median_delay_rows'])} |")
    return "\n".join(rows)


def doc_block(latest):
    sim, bench = latest["simulation"], latest["benchmark"]
    sweep = sim["sweep"]
    slow = set(sim["slow_degradations"])
    ctrl = sim["control"]
    clean = sim["clean_instruments_of_faulty_fleets"]
    lines = [
        f"Generated by `make evaluate` on {latest['generated_at']} at commit `{latest['commit']}`.",
        "",
        f"Sweep: seeds 1–{sweep['seeds']}"
        + (f" (runs longer than two days: seeds 1–{sweep['long_seeds']})"
           if sweep.get("long_seeds", sweep["seeds"]) != sweep["seeds"] else "")
        + f" × fleets {sweep['fleets']} × "
        f"{', '.join(f'{h:g} h' for h in sweep['hours'])} "
        f"(sensor samples every {', '.join(f'{s} s' for s in sweep['sample_intervals_s'])}) × bad-record "
        f"shares {sweep['bad_shares']}, each once with faults and once as a fault-free control fleet: "
        f"{sweep['runs']} runs, {sweep['events']:,} records through the six stages, "
        f"{sweep['elapsed_s']} s.",
        "",
        "**Targets**: " + ("all met." if not latest["target_misses"] else
                           "missed: " + "; ".join(latest["target_misses"]) + "."),
        "",
        f"**False alerts on the control fleets**: {fmt(ctrl['false_alerts'])} in "
        f"{fmt(ctrl['instrument_months'], 1)} instrument-months = "
        f"**{fmt(ctrl['per_instrument_month'], 3)} per instrument-month** (target ≤ 0.5); "
        f"by metric: {ctrl['by_metric'] or 'none'}. On the fault-free instruments of the faulty "
        f"fleets: {fmt(clean['false_alerts'])} in {fmt(clean['instrument_months'], 1)} "
        f"instrument-months ({fmt(clean['per_instrument_month'], 3)}).",
        "",
        "### Per fault (all durations)",
        "",
        per_fault_table(sim["per_fault"], slow),
        "",
        "### Fleet attribution (cohort analyzer)",
        "",
        fleet_table(sim.get("fleet_attribution", {})),
        "",
    ]
    for dur, d in sim["by_duration"].items():
        lines += [f"### {dur} runs only", "", per_fault_table(d["per_fault"], slow), "",
                  f"Control fleets: {fmt(d['control']['per_instrument_month'], 3)} false alerts "
                  f"per instrument-month.", ""]
    lines += ["### Public benchmarks", "", bench_table(bench), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--simulation", required=True)
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--doc")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--quick", action="store_true", help="quick-sweep targets (see check())")
    a = ap.parse_args()
    sim = json.load(open(a.simulation))
    bench = json.load(open(a.benchmark))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    misses = check(sim, a.quick)
    latest = {
        "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "false_alerts_per_instrument_month": sim["false_alerts_per_instrument_month"],
        "per_fault": {
            name: {k: f[k] for k in ("class", "injected", "recall", "lead_before_spec_h_median",
                                     "lead_before_spec_h_p10", "lead_before_failure_h_median",
                                     "part_right", "detected_before_spec",
                                     "first_alert_from_forecast", "maintenance_due_before_spec")
               if k in f}
            for name, f in sim["per_fault"].items()
        },
        "targets": TARGETS,
        "target_misses": misses,
        "simulation": sim,
        "benchmark": bench,
    }
    with open(a.json, "w") as f:
        json.dump(latest, f, indent=2)
    print(f"wrote {a.json}")
    if a.doc:
        text = open(a.doc).read()
        begin, end = "<!-- evaluate:begin -->", "<!-- evaluate:end -->"
        if begin not in text or end not in text:
            sys.exit(f"{a.doc} has no {begin} / {end} markers")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(a.doc, "w") as f:
            f.write(head + begin + "\n" + doc_block(latest) + "\n" + end + tail)
        print(f"updated {a.doc}")
    for m in misses:
        print(f"target missed: {m}")
    if a.check and misses:
        sys.exit(1)


if __name__ == "__main__":
    main()
