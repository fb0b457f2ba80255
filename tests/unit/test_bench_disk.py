"""The disk's ceilings and recovery of ``fastfanout.bench.disk`` (what e2e_durable.py holds
durable figures to), and the row layout of ``--api numpy``, in tiny configurations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastfanout.bench.disk import (
    RECORD_BYTES,
    describe_disk,
    disk_read,
    disk_write,
    journal_scan,
    journal_write,
    recovery_run,
)


@pytest.mark.parametrize("sync", [True, False])
def test_disk_write_writes_every_record_and_reads_them_back(tmp_path: Path,
                                                            sync: bool) -> None:
    rate, path = disk_write(str(tmp_path), 100, 10, sync)
    assert rate > 0 and os.path.dirname(path) == str(tmp_path)
    assert os.path.getsize(path) == 100 * RECORD_BYTES
    assert disk_read(path) > 0


def test_the_journal_alone_appends_and_scans_every_record(tmp_path: Path) -> None:
    rate, path = journal_write(str(tmp_path), 1000, 100, False)
    assert rate > 0
    assert journal_scan(path) > 0


def test_recovery_recovers_every_stored_message(tmp_path: Path) -> None:
    from fastfanout.bench.adapters import durable_unavailable

    if durable_unavailable():
        pytest.skip(durable_unavailable() or "")
    recovered, read = recovery_run(20_000, str(tmp_path))   # raises when one is missing
    assert recovered > 0 and read > 0
    assert os.listdir(tmp_path) == []   # its data directory is removed


def test_describe_disk_names_the_filesystem(tmp_path: Path) -> None:
    line = describe_disk(str(tmp_path))
    assert line.startswith(f"data dir {tmp_path}: ") and " on " in line


def test_rows_of_the_numpy_api_carry_the_same_headers_as_the_bodies() -> None:
    numpy = pytest.importorskip("numpy")
    from fastfanout.bench.payload import array_headers, make_bodies, make_rows

    rows = make_rows(3, 10, 20, 64, 77)
    assert rows.shape == (20, 64) and rows.dtype == numpy.uint8
    assert [bytes(row) for row in rows] == make_bodies(3, 10, 20, 64, 77)
    headers = array_headers(rows)
    assert headers.publishers.tolist() == [3] * 20
    assert headers.seqs.tolist() == list(range(10, 30))
    assert headers.stamps.tolist() == [77] * 20
