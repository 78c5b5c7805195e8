"""Prints the records of one InterOp file as Illumina's `interop` package reads them, as JSON,
for the record-level cross-check in newer_instruments.rs.

Usage: python interop_records.py FILE KIND
  (KIND: tile | extended_tile | extraction | q | corrected | image | index)

Index records carry counts only: the sample and project names never leave this script.

interop reads <folder>/InterOp/<canonical name>; the file is linked under that name in a
temporary folder, so files of the per-cycle folders (C<cycle>.1) can be read too.
"""
import json
import math
import os
import sys
import tempfile

from interop import py_interop_comm, py_interop_metrics

NAMES = {
    "tile": "TileMetricsOut.bin",
    "extended_tile": "ExtendedTileMetricsOut.bin",
    "extraction": "ExtractionMetricsOut.bin",
    "q": "QMetricsOut.bin",
    "corrected": "CorrectedIntMetricsOut.bin",
    "image": "ImageMetricsOut.bin",
    "index": "IndexMetricsOut.bin",
}


def number(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def main(path, kind):
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(os.path.join(tmp, "InterOp"))
        os.symlink(os.path.abspath(path), os.path.join(tmp, "InterOp", NAMES[kind]))
        out = []
        if kind == "tile":
            s = py_interop_metrics.base_tile_metrics()
            py_interop_comm.read_interop(tmp, s)
            for i in range(s.size()):
                t = s.at(i)
                reads = t.read_metrics()
                out.append({
                    "lane": t.lane(), "tile": t.tile(),
                    "clusters": number(t.cluster_count()), "clusters_pf": number(t.cluster_count_pf()),
                    "density": number(t.cluster_density()), "density_pf": number(t.cluster_density_pf()),
                    "aligned": [[reads[j].read(), number(reads[j].percent_aligned())] for j in range(len(reads))],
                })
        elif kind == "extraction":
            s = py_interop_metrics.base_extraction_metrics()
            py_interop_comm.read_interop(tmp, s)
            for i in range(s.size()):
                t = s.at(i)
                channels = range(t.channel_count())
                out.append({
                    "lane": t.lane(), "tile": t.tile(), "cycle": t.cycle(),
                    "intensity": [t.max_intensity(c) for c in channels],
                    "focus": [number(t.focus_score(c)) for c in channels],
                })
        elif kind == "q":
            s = py_interop_metrics.base_q_metrics()
            py_interop_comm.read_interop(tmp, s)
            values = [s.bin_at(b).value() for b in range(s.bin_count())]
            for i in range(s.size()):
                t = s.at(i)
                out.append({
                    "lane": t.lane(), "tile": t.tile(), "cycle": t.cycle(),
                    # (Q value, count): the bin's value when binned, else Q1..Q50.
                    "hist": [[values[b] if values else b + 1, t.qscore_hist(b)] for b in range(t.size())],
                })
        elif kind == "corrected":
            s = py_interop_metrics.base_corrected_intensity_metrics()
            py_interop_comm.read_interop(tmp, s)
            for i in range(s.size()):
                t = s.at(i)
                out.append({
                    "lane": t.lane(), "tile": t.tile(), "cycle": t.cycle(),
                    "calls": [number(t.no_calls())] + [number(t.called_counts(b)) for b in range(4)],
                })
        elif kind == "image":
            s = py_interop_metrics.base_image_metrics()
            py_interop_comm.read_interop(tmp, s)
            for i in range(s.size()):
                t = s.at(i)
                channels = range(t.channel_count())
                out.append({
                    "lane": t.lane(), "tile": t.tile(), "cycle": t.cycle(),
                    "min": [t.min_contrast(c) for c in channels],
                    "max": [t.max_contrast(c) for c in channels],
                })
        elif kind == "index":
            s = py_interop_metrics.base_index_metrics()
            py_interop_comm.read_interop(tmp, s)
            for i in range(s.size()):
                t = s.at(i)
                indices = t.indices()
                out.append({
                    "lane": t.lane(), "tile": t.tile(), "read": t.read(),
                    "clusters": sum(indices[k].cluster_count() for k in range(len(indices))),
                })
        else:
            s = py_interop_metrics.base_extended_tile_metrics()
            py_interop_comm.read_interop(tmp, s)
            for i in range(s.size()):
                t = s.at(i)
                out.append({
                    "lane": t.lane(), "tile": t.tile(),
                    "occupied": number(t.cluster_count_occupied()),
                    "upper_left": [number(t.upper_left().x()), number(t.upper_left().y())],
                })
        print(json.dumps({"version": s.version(), "records": out}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
