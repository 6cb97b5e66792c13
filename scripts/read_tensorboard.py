"""Print every scalar of a TensorBoard log folder as JSON, read by the real readers.

    $HONE_PYTHON scripts/read_tensorboard.py <logdir>

HONE_PYTHON is the python of the venv that `make pyenv` builds (tbparse 0.0.9, tensorboard
2.21.0). Output, one JSON object on stdout:

    {"tbparse": [{"tag", "step", "value", "wall_time"}, ...],
     "event_accumulator": [{"tag", "step", "value", "wall_time"}, ...],
     "file_versions": ["brain.Event:2", ...]}

"tbparse" comes from tbparse.SummaryReader, "event_accumulator" from tensorboard's own
EventAccumulator on each event file; "file_versions" holds the file_version string of each
file's first event, as tensorboard's EventFileLoader (which checks the record CRCs) reads it. Values are
float32 widened to float64, so they read back exactly; NaN and infinities are written as the
strings "nan", "inf", "-inf" because JSON has no such numbers. Rows are sorted by (tag, step).
"""

import glob
import json
import math
import os
import sys


def number(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def with_tbparse(logdir):
    from tbparse import SummaryReader

    df = SummaryReader(logdir, extra_columns={"wall_time"}).scalars
    rows = [
        {"tag": str(r.tag), "step": int(r.step), "value": number(r.value), "wall_time": float(r.wall_time)}
        for r in df.itertuples(index=False)
    ]
    return sorted(rows, key=lambda r: (r["tag"], r["step"]))


def with_event_accumulator(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    rows, versions = [], []
    for path in sorted(glob.glob(os.path.join(logdir, "*tfevents*"))):
        first = next(iter(EventFileLoader(path).Load()), None)
        versions.append(first.file_version if first is not None else None)
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                rows.append({"tag": tag, "step": int(e.step), "value": number(e.value), "wall_time": float(e.wall_time)})
    return sorted(rows, key=lambda r: (r["tag"], r["step"])), versions


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: read_tensorboard.py <logdir>")
    logdir = sys.argv[1]
    if not os.path.isdir(logdir):
        sys.exit(f"{logdir}: not a folder")
    accumulated, versions = with_event_accumulator(logdir)
    json.dump({"tbparse": with_tbparse(logdir), "event_accumulator": accumulated, "file_versions": versions}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
