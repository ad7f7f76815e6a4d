"""The experiment records on disk: one strict-JSON file per experiment in the output folder.

A run with one kernel set keeps the other kernel set's run from an earlier
record of the identical experiment (same settings, dataset and seed), so
`--kernels fast` then `--kernels reference` into one folder still gives the
report both timings. Anything else in an old record is replaced.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .configs import EXPERIMENTS


def record_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.json"


def save_record(record: dict, out_dir: Path) -> dict:
    """Write record (merged with a matching earlier one) to out_dir/NAME.json; the written record."""
    path = record_path(out_dir, record["experiment"])
    previous = _read(path)
    if previous and previous["settings"] == _jsonable(record["settings"]):
        runs = {**previous["runs"], **record["runs"]}
        record = {**record, "runs": runs}
    record = _jsonable(record)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)  # never leave a half-written record behind
    return record


def load_records(out_dir: Path) -> list[dict]:
    """Every experiment record in out_dir, in the notebook's order."""
    found = (_read(record_path(out_dir, name)) for name in EXPERIMENTS)
    return [record for record in found if record]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _jsonable(value):
    """Tuples as lists and non-finite floats as null, so the file is strict JSON."""
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
