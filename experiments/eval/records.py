"""Append-only JSONL results: one line per finished case, fsynced.

A rerun skips a case iff a line with its `case_key` and status "ok" exists;
a torn last line (a run killed mid-write) is ignored on load. The key hashes
the run fingerprint (model, dtype, RoPE scaling, chat, attention config and
backend, generation reserve, data source) with the task, its version and
the case id, so answers of one config are never served as another's (the
lm-eval cache pitfall). Tables and plots are recomputed from this file.
"""

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def digest(obj: Any) -> str:
  """sha256 (hex, 16 chars) of an object's canonical JSON."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def case_key(fingerprint: str, task: str, version: int, case_id: str) -> str:
  """The resume key of one case."""
  return digest([fingerprint, task, version, case_id])


def iter_records(path: str | Path) -> Iterator[dict]:
  """The records of a results file, skipping torn or corrupt lines."""
  path = Path(path)
  if not path.is_file():
    return
  with path.open() as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a torn write
      if isinstance(record, dict):
        yield record


class ResultsFile:
  """Appends records as they finish; knows which cases are done.

  Args:
    path: the JSONL file (created with its folder when missing).
  """

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.done = {r["case_key"] for r in iter_records(self.path)
                 if r.get("status") == "ok" and "case_key" in r}
    self._ensure_newline()

  def _ensure_newline(self) -> None:
    """A torn last line gets a newline, so the next record starts clean."""
    if self.path.is_file() and self.path.stat().st_size:
      with self.path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
      if last != b"\n":
        with self.path.open("a") as f:
          f.write("\n")

  def import_from(self, path: str | Path) -> int:
    """Appends the finished records of another results file that this one
    lacks; returns how many."""
    added = 0
    for record in iter_records(path):
      if record.get("status") == "ok" and record.get("case_key") not in (
          self.done):
        self.append(record)
        added += 1
    return added

  def append(self, record: Mapping[str, Any]) -> None:
    """Writes one record and syncs it to disk before returning."""
    line = dict(record)
    line.setdefault("schema_version", SCHEMA_VERSION)
    line.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    text = json.dumps(line, sort_keys=False, default=_plain) + "\n"
    with self.path.open("a") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    if line.get("status") == "ok":
      self.done.add(line["case_key"])


def _plain(value: Any) -> Any:
  try:
    import numpy as np

    if isinstance(value, np.generic):
      return value.item()
    if isinstance(value, np.ndarray):
      return value.tolist()
  except ImportError:  # pragma: no cover
    pass
  return str(value)
