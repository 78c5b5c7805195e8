#!/usr/bin/env python3
"""Public labelled benchmarks for the anomaly detector, scored through `anomaly-detector score`.

Usage: benchmark.py --detector PATH --cache DIR --out FILE [--skab-dir DIR]

Sources (none of their data is in this repository; it is fetched or pointed to at run time):

* UCR anomaly archive (KDD Cup 2021) series #135 "InternalBleeding16" and an MIT-BIH arrhythmia
  excerpt, as shipped inside the PyPI wheels of aeon 1.6.0 and sktime 1.2.0 (fetched with
  `pip download`, checked by SHA-256, read with zipfile; nothing is installed). Row labels 0/1.
* SKAB, the Skoltech Anomaly Benchmark (a water-pump test rig: accelerometers, current,
  pressure, temperatures, voltage, flow; valve and pump faults labelled per row), when
  --skab-dir names the `data` folder of a checkout of https://github.com/waico/SKAB (GPL-3.0
  data, so it is not fetched into this project). Without it SKAB is reported as skipped.

Each series is scored online, row by row, with no look-ahead and no spec range: every channel
goes through `anomaly-detector score` on its own and a row is an alarm when any channel scores
0.5 or more. Reported per source: row-wise F1, false-alarm rate (FAR: alarms among normal rows)
and missed-alarm rate (MAR: normal-labelled among anomalous rows), the share of labelled anomaly
segments with at least one alarm inside them, and the median delay to the first alarm in a
segment (rows). The same figures are measured in the same run for a baseline detector: a fixed
mean ± 3 sd band per channel from the series' first 20% of rows (or its anomaly-free prefix).
Only the Python standard library is used.
"""
import argparse
import csv
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import zipfile

WHEELS = {
    "aeon": ("aeon==1.6.0", "aeon-1.6.0-py3-none-any.whl",
             "d05227086706f80111ac5fee8de4d5d3115bb3bcfd1c786c8629393055816409"),
    "sktime": ("sktime==1.2.0", "sktime-1.2.0-py3-none-any.whl",
               "dbffc6731d2d683b668dceb5e2bbc5804bebc8446b4c580803a281684d90e4ae"),
}
# name -> (wheel, member, value column, label column)
WHEEL_SERIES = {
    "ucr135_internal_bleeding16": (
        "aeon", "aeon/datasets/data/KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16_TEST.csv",
        "value", "is_anomaly"),
    "mitdb_excerpt": ("sktime", "sktime/datasets/data/mitdb/mitdb.csv", "data", "label"),
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(key, cache):
    spec, name, digest = WHEELS[key]
    path = os.path.join(cache, name)
    if not (os.path.exists(path) and sha256(path) == digest):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--only-binary=:all:", "--disable-pip-version-check", "-q",
                        "-d", cache, spec], check=True)
    if sha256(path) != digest:
        sys.exit(f"benchmark: {name} does not match its pinned SHA-256")
    return path


def wheel_series(cache):
    """(name, timestamps, {channel: values}, labels) of each wheel series."""
    out = []
    zips = {}
    for name, (key, member, vcol, lcol) in WHEEL_SERIES.items():
        if key not in zips:
            zips[key] = zipfile.ZipFile(wheel(key, cache))
        with zips[key].open(member) as raw:
            rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")))
        # No wall-clock time in these sources: the row index, as seconds.
        ts = [str(i) for i in range(len(rows))]
        values = [r[vcol].strip() for r in rows]
        labels = [1 if float(r[lcol]) != 0 else 0 for r in rows]
        out.append((name, ts, {"value": values}, labels, None))
    return out


def skab_series(data_dir):
    out = []
    for folder in ("valve1", "valve2", "other"):
        d = os.path.join(data_dir, folder)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d), key=lambda n: (len(n), n)):
            if not f.endswith(".csv"):
                continue
            with open(os.path.join(d, f), newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter=";"))
            if not rows:
                continue
            channels = [c for c in rows[0] if c not in ("datetime", "anomaly", "changepoint")]
            ts = [r["datetime"] for r in rows]
            values = {c: [r[c] for r in rows] for c in channels}
            labels = [1 if float(r["anomaly"]) != 0 else 0 for r in rows]
            # SKAB's files start with a stretch of normal operation before the fault is induced.
            out.append((f"{folder}/{f}", ts, values, labels, None))
    return out


def score_channel(detector, ts, values):
    text = "timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in zip(ts, values))
    p = subprocess.run([detector, "score"], input=text, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"benchmark: anomaly-detector score failed: {p.stderr.strip()}")
    lines = p.stdout.strip().split("\n")[1:]
    return [float(l.rsplit(",", 1)[1]) if l.rsplit(",", 1)[1] else 0.0 for l in lines]


def band_alarms(values, labels):
    """The baseline: mean ± 3 sd of the first 20% (normal) rows, fixed."""
    xs = [float(v) for v in values]
    n = max(10, len(xs) // 5)
    head = [x for x, l in zip(xs[:n], labels[:n]) if l == 0] or xs[:n]
    mu = statistics.fmean(head)
    sd = statistics.pstdev(head) or 1e-9
    return [abs(x - mu) > 3 * sd for x in xs]


def segments(labels):
    segs, start = [], None
    for i, l in enumerate(labels + [0]):
        if l and start is None:
            start = i
        elif not l and start is not None:
            segs.append((start, i))
            start = None
    return segs


def tally(acc, alarms, labels):
    for a, l in zip(alarms, labels):
        acc["tp"] += a and l
        acc["fp"] += a and not l
        acc["fn"] += (not a) and l
        acc["tn"] += (not a) and (not l)
    for s, e in segments(labels):
        acc["segments"] += 1
        hit = next((i for i in range(s, e) if alarms[i]), None)
        if hit is not None:
            acc["segments_hit"] += 1
            acc["delays"].append(hit - s)


def summary(acc):
    tp, fp, fn, tn = acc["tp"], acc["fp"], acc["fn"], acc["tn"]
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {
        "rows": tp + fp + fn + tn,
        "anomalous_rows": tp + fn,
        "f1": round(f1, 4),
        "far_pct": round(100 * fp / (fp + tn), 2) if fp + tn else None,
        "mar_pct": round(100 * fn / (fn + tp), 2) if fn + tp else None,
        "segments": acc["segments"],
        "segments_detected": acc["segments_hit"],
        "median_delay_rows": statistics.median(acc["delays"]) if acc["delays"] else None,
    }


def new_acc():
    return {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "segments": 0, "segments_hit": 0, "delays": []}


def evaluate(detector, series):
    ours, base = new_acc(), new_acc()
    per_series = []
    for name, ts, channels, labels, _ in series:
        alarms = [False] * len(labels)
        band = [False] * len(labels)
        for values in channels.values():
            scores = score_channel(detector, ts, values)
            alarms = [a or s >= 0.5 for a, s in zip(alarms, scores)]
            band = [a or b for a, b in zip(band, band_alarms(values, labels))]
        one = new_acc()
        tally(one, alarms, labels)
        tally(ours, alarms, labels)
        tally(base, band, labels)
        per_series.append({"series": name, **summary(one)})
    return {"detector": summary(ours), "baseline_3sd_band": summary(base), "series": per_series}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detector", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skab-dir", default=os.environ.get("SKAB_DIR", ""))
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    result = {"method": "online, row by row, no look-ahead: `anomaly-detector score` per channel; "
                        "a row alarms when any channel scores >= 0.5"}
    result["ucr_and_mitbih"] = evaluate(args.detector, wheel_series(args.cache))
    if args.skab_dir and os.path.isdir(args.skab_dir):
        result["skab"] = evaluate(args.detector, skab_series(args.skab_dir))
        result["skab"]["source"] = os.path.abspath(args.skab_dir)
    else:
        result["skab"] = {"skipped": "no --skab-dir / SKAB_DIR (a checkout's data folder of "
                                     "https://github.com/waico/SKAB)"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for key in ("ucr_and_mitbih", "skab"):
        r = result[key]
        if "detector" in r:
            print(f"{key}: detector {r['detector']}  baseline {r['baseline_3sd_band']}")
        else:
            print(f"{key}: {r['skipped']}")


if __name__ == "__main__":
    main()
