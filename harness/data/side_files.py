"""Side files of a chain partition (`atm.arrow`, `marks.arrow`): Arrow IPC files written just
after the partition's rows and paired with them, so a reader never takes one written for other
rows. The partition's footer carries a write id; a side file's footer names that id and the
partition file's size and mtime, and is used only when all three match (an interrupted write,
an older version's write, a rewrite by another tool or a copy that did not keep mtimes: no
match, the partition is read as if it had none). See docs/data.md "ATM summary".
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WRITE_ID_KEY = b"harness.write_id"  # in the partition's and its side files' footers: a pair
PART_STAT_KEY = b"harness.part_stat"  # the partition file's "size mtime_ns" when paired


def _stat_text(part: Path) -> bytes:
    stat = part.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}".encode()


def has_write_id(part: Path) -> bool:
    """Whether a Parquet chain partition was written by a version that pairs side files."""
    return WRITE_ID_KEY in (pq.read_metadata(part).metadata or {})


def write_paired(table: pa.Table, part: Path, path: Path) -> None:
    """Write `table` (its footer holding the partition's write id) to `path` (an uncompressed
    Arrow IPC file, the caller's temporary one), naming the size and mtime of the written
    partition file `part`."""
    meta = dict(table.schema.metadata or {})
    meta[PART_STAT_KEY] = _stat_text(part)
    table = table.replace_schema_metadata(meta)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def open_paired(reader: pq.ParquetFile, part: Path, path: Path) -> pa.Table | None:
    """The side file `path` of the open partition `part`, memory-mapped, when it was written
    with those rows; None when it is missing, unreadable or not paired with them."""
    kv = reader.metadata.metadata or {}
    if WRITE_ID_KEY not in kv or not path.exists():
        return None
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        stat = _stat_text(part)
    except (OSError, pa.ArrowException):
        return None  # unreadable: as if there were none
    meta = table.schema.metadata or {}
    if meta.get(WRITE_ID_KEY) != kv[WRITE_ID_KEY] or meta.get(PART_STAT_KEY) != stat:
        return None
    return table
