"""Where the benchmarks put their ipc sockets (fastfanout/bench/processes.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import zmq

from fastfanout.bench.processes import SOCKET_PATH_ROOM, socket_directory


def test_a_socket_directory_is_under_tmpdir_when_it_leaves_room(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(short_dir))
    with socket_directory("ffbench-") as directory:
        assert Path(directory).parent == short_dir and os.path.isdir(directory)
    assert not os.path.exists(directory)


def test_a_long_tmpdir_puts_the_sockets_under_tmp(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a TMPDIR of 80 bytes left a broker's "ff.sock.stream" past libzmq's 107: the
    # bench failed to bind
    deep = short_dir / ("d" * (80 - len(str(short_dir)) - 1))
    deep.mkdir()
    assert len(f"{deep}/ffbench-abcdefgh/ff.sock.stream") > zmq.IPC_PATH_MAX_LEN
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with socket_directory("ffbench-") as directory:
        assert Path(directory).parent == Path("/tmp")
        assert len(directory) + SOCKET_PATH_ROOM <= zmq.IPC_PATH_MAX_LEN
        endpoint = f"ipc://{directory}/ff.sock.stream"
        context = zmq.Context()
        try:
            sock = context.socket(zmq.PULL)
            sock.bind(endpoint)   # binds: the path fits
            sock.close(linger=0)
        finally:
            context.term()
    assert not os.path.exists(directory)
