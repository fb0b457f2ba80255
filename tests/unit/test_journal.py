"""The journal (ext/journal.pyx): records, segments, group commit, recovery, faults."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest
from waits import wait_until

from fastfanout._ext import journal
from fastfanout.errors import InvalidArgument, StoreFailed, StoreFull


def read_all(directory, repair=True):
    records = []
    report = journal.scan(directory, lambda seq, kind, payload: records.append(
        (seq, kind, payload)), repair=repair)
    return records, report


def segment_paths(directory):
    return [os.path.join(directory, name) for _, name in journal.segments(directory)]


@pytest.fixture(autouse=True)
def no_faults_left():
    yield
    journal.inject_fault("write", 0)
    journal.inject_fault("fsync", 0)


def test_crc32c_matches_the_rfc_3720_vectors():
    assert journal.crc32c(b"123456789") == 0xE3069283
    assert journal.crc32c(bytes(32)) == 0x8A9136AA
    assert journal.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert journal.crc32c(bytes(range(32))) == 0x46DD794E
    assert journal.crc32c(b"6789", journal.crc32c(b"12345")) == 0xE3069283   # continued


def test_records_round_trip_across_segments(tmp_path):
    writer = journal.Journal(tmp_path, segment_bytes=4096)
    written = []
    for commit in range(20):
        for n in range(10):
            payload = os.urandom(random.randrange(0, 300))
            kind = 1 + (commit + n) % 255
            assert writer.append(kind, payload) == len(written) + 1
            written.append((len(written) + 1, kind, payload))
        assert writer.commit() == len(written)
    writer.close()
    assert len(journal.segments(tmp_path)) > 3          # rolled
    records, report = read_all(tmp_path)
    assert records == written
    assert (report.records, report.first_seq, report.last_seq) == (200, 1, 200)
    assert report.torn_tail is None and report.skipped == [] and report.bad_segments == []
    firsts = [base for base, _ in journal.segments(tmp_path)]   # named by first record
    assert firsts[0] == 1 and set(firsts) <= {seq for seq, _, _ in records}


def test_group_commit_is_one_fdatasync_for_the_batch(tmp_path):
    writer = journal.Journal(tmp_path)
    for n in range(1000):
        writer.append(1, b"m%d" % n)
    assert writer.written_seq == 0 and writer.synced_seq == 0     # buffered only
    assert writer.commit() == 1000
    assert writer.syncs == 1 and writer.synced_seq == 1000
    writer.commit()                                                 # nothing new: no sync
    assert writer.syncs == 1
    writer.append(2, b"late")
    assert writer.commit(sync=False) == 1001 and writer.synced_seq == 1000
    writer.close()


def test_a_reopened_journal_continues_the_sequence(tmp_path):
    writer = journal.Journal(tmp_path)
    for n in range(5):
        writer.append(1, b"%d" % n)
    writer.close()
    _, report = read_all(tmp_path)
    writer = journal.Journal(tmp_path, next_seq=report.last_seq + 1)
    assert writer.append(1, b"5") == 6
    writer.close()
    records, report = read_all(tmp_path)
    assert [seq for seq, _, _ in records] == [1, 2, 3, 4, 5, 6]
    assert report.skipped == [] and report.torn_tail is None


def test_a_torn_tail_is_cut_and_reported(tmp_path):
    writer = journal.Journal(tmp_path)
    for _ in range(10):
        writer.append(1, b"x" * 40)
    writer.close()
    path = segment_paths(tmp_path)[-1]
    good_size = os.path.getsize(path)
    with open(path, "r+b") as file:   # tear the last record in half, then garbage
        file.seek(good_size - 30)
        file.write(os.urandom(100))
    records, report = read_all(tmp_path)
    assert [seq for seq, _, _ in records] == list(range(1, 10))
    tail = report.torn_tail
    assert tail is not None and tail["offset"] == good_size - 64 and tail["bytes"] == 134
    assert os.path.getsize(path) == good_size - 64                 # cut at the bad record
    writer = journal.Journal(tmp_path, next_seq=10)
    writer.append(1, b"again")
    writer.close()
    records, report = read_all(tmp_path)
    assert [seq for seq, _, _ in records] == list(range(1, 11)) and report.torn_tail is None


def test_a_check_without_repair_changes_no_file(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.append(1, b"x" * 40)
    writer.close()
    path = segment_paths(tmp_path)[-1]
    with open(path, "ab") as file:
        file.write(b"\x01" * 40)
    size = os.path.getsize(path)
    _, report = read_all(tmp_path, repair=False)
    assert report.torn_tail is not None and os.path.getsize(path) == size


@pytest.mark.parametrize("where", ["payload", "length", "header"])
def test_a_bad_record_in_an_older_segment_is_skipped_precisely(tmp_path, where):
    writer = journal.Journal(tmp_path, segment_bytes=4096)
    for commit in range(6):
        for n in range(20):
            writer.append(1, b"record %d.%d" % (commit, n) + b"." * 40)
        writer.commit()
    writer.close()
    before, _ = read_all(tmp_path)
    victim = segment_paths(tmp_path)[1]
    record_size = 24 + 56
    # the 5th record of the second segment: flip a bit of its payload, its length or crc
    offset = 32 + 4 * record_size + {"payload": 30, "length": 5, "header": 1}[where]
    with open(victim, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0x10]))
    after, report = read_all(tmp_path)
    assert len(report.skipped) == 1
    skipped = report.skipped[0]
    assert skipped["segment"] == os.path.basename(victim)
    assert skipped["offset"] == 32 + 4 * record_size and skipped["bytes"] == record_size
    lost = skipped["after_seq"] + 1
    assert skipped["next_seq"] == lost + 1
    assert after == [record for record in before if record[0] != lost]   # all others kept
    assert report.torn_tail is None


def test_a_segment_cut_short_in_the_middle_keeps_the_later_segments(tmp_path):
    writer = journal.Journal(tmp_path, segment_bytes=4096)
    for _ in range(6):
        for _ in range(20):
            writer.append(1, b"y" * 50)
        writer.commit()
    writer.close()
    paths = segment_paths(tmp_path)
    before, _ = read_all(tmp_path)
    os.truncate(paths[1], os.path.getsize(paths[1]) - 100)
    after, report = read_all(tmp_path)
    assert report.torn_tail is None and len(report.skipped) == 1
    assert report.skipped[0]["segment"] == os.path.basename(paths[1])
    assert after[-1] == before[-1]                       # the later segments are whole
    assert len(before) - len(after) == 2                 # the cut record and the torn one


def _four_segments_or_more(tmp_path):
    """A journal of 200 records in 10 commits over small segments; their paths."""
    writer = journal.Journal(tmp_path, segment_bytes=4096)
    for _ in range(10):
        for _ in range(20):
            writer.append(1, b"y" * 50)
        writer.commit()
    writer.close()
    paths = segment_paths(tmp_path)
    assert len(paths) >= 4
    return paths


@pytest.mark.parametrize("header_of_the_next", ["good", "bad"])
def test_a_stretch_cut_at_a_segments_end_names_the_next_good_sequence(
        tmp_path, header_of_the_next):
    paths = _four_segments_or_more(tmp_path)
    before, _ = read_all(tmp_path)
    os.truncate(paths[1], os.path.getsize(paths[1]) - 100)
    if header_of_the_next == "bad":   # its records are read by its name all the same
        with open(paths[2], "r+b") as file:
            file.write(b"NOTMAGIC")
    after, report = read_all(tmp_path)
    (skipped,) = report.skipped
    assert skipped["next_seq"] == int(os.path.basename(paths[2])[:20])
    assert report.bad_headers == ([os.path.basename(paths[2])]
                                  if header_of_the_next == "bad" else [])
    kept = {record[0] for record in after}
    lost = {record[0] for record in before} - kept
    assert lost == set(range(skipped["after_seq"] + 1, skipped["next_seq"]))


def record_ends(path):
    """The offsets where the records of a whole segment file end."""
    with open(path, "rb") as file:
        content = file.read()
    offset, ends = journal.SEGMENT_HEADER_BYTES, []
    while offset < len(content):
        length = int.from_bytes(content[offset + 4:offset + 8], "little")
        offset += (journal.RECORD_HEADER_BYTES + length + 7) // 8 * 8
        ends.append(offset)
    return ends


@pytest.mark.parametrize("damage", ["deleted", "cut at a record's end", "emptied"])
def test_records_missing_between_segments_are_reported(tmp_path, damage):
    # until 2026-12-05 a segment deleted from the middle of the journal, or one cut at a
    # record's end, was read over without a word: its records were lost unreported
    paths = _four_segments_or_more(tmp_path)
    before, report = read_all(tmp_path)
    assert report.missing == []
    bases = [base for base, _ in journal.segments(tmp_path)]
    if damage == "deleted":
        os.unlink(paths[1])
        after_seq = bases[1] - 1
    elif damage == "emptied":
        os.truncate(paths[1], 0)
        after_seq = bases[1] - 1
    else:
        ends = record_ends(paths[1])
        os.truncate(paths[1], ends[len(ends) // 2])
        after_seq = bases[1] + len(ends) // 2
    after, report = read_all(tmp_path)
    assert report.missing == [{"segment": os.path.basename(paths[2]),
                               "after_seq": after_seq, "next_seq": bases[2]}]
    assert report.skipped == [] and report.torn_tail is None
    kept = {record[0] for record in after}
    assert {record[0] for record in before} - kept == set(range(after_seq + 1, bases[2]))


def test_a_restart_past_a_segment_with_no_record_is_no_gap(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.append(1, b"x")
    writer.close()
    # a roll a crash cut short: the next segment's file holds its header only, and the
    # next run begins past its name (as a durable broker's recovery does)
    (tmp_path / journal.segment_name(2)).write_bytes(journal.segment_header(2))
    writer = journal.Journal(tmp_path, next_seq=3)
    writer.append(1, b"y")
    writer.close()
    records, report = read_all(tmp_path)
    assert [record[0] for record in records] == [1, 3]
    assert report.missing == [] and report.skipped == []


def test_a_file_that_is_not_a_segment_is_reported_and_left(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.append(1, b"x")
    writer.close()
    stray = tmp_path / journal.segment_name(99)
    stray.write_bytes(b"not a segment at all, no magic" * 2)
    records, report = read_all(tmp_path)
    assert len(records) == 1 and report.bad_segments == [stray.name] and stray.exists()


def simulate_power_loss(directory, synced_sizes, rng):
    """The disk keeps what was fsynced; the unsynced tail of each segment is garbage."""
    for path in segment_paths(directory):
        name = os.path.basename(path)
        keep = synced_sizes.get(name, 32)
        size = os.path.getsize(path)
        os.truncate(path, keep)
        if size > keep and rng.random() < 0.7:
            with open(path, "ab") as file:
                file.write(rng.randbytes(rng.randrange(1, size - keep + 1)))


def test_with_fsync_always_power_loss_loses_no_confirmed_record(tmp_path):
    rng = random.Random(1234)
    detected = injected = 0
    for trial in range(200):
        directory = tmp_path / f"trial{trial}"
        writer = journal.Journal(directory, segment_bytes=4096)
        confirmed = 0
        for _ in range(rng.randrange(1, 8)):
            for _ in range(rng.randrange(1, 12)):
                writer.append(1 + rng.randrange(255), rng.randbytes(rng.randrange(0, 400)))
            confirmed = writer.commit()                   # fsync=always: confirmed now
        for _ in range(rng.randrange(0, 12)):             # in flight: never confirmed
            writer.append(7, rng.randbytes(rng.randrange(0, 120)))
        if rng.random() < 0.5:
            writer.flush()                                # written, not synced
        sizes = writer.synced_sizes_by_segment()
        del writer                                        # the process "dies"
        simulate_power_loss(directory, sizes, rng)
        garbage = sum(os.path.getsize(path) for path in segment_paths(directory)) - sum(
            sizes.get(os.path.basename(path), 32) for path in segment_paths(directory))
        records, report = read_all(directory)
        seqs = [seq for seq, _, _ in records]
        assert seqs[:confirmed] == list(range(1, confirmed + 1)), trial   # none lost
        assert seqs == list(range(1, len(seqs) + 1))      # nothing out of order or doubled
        if garbage:
            injected += 1
            detected += report.torn_tail is not None
    assert injected > 50 and detected == injected


def test_an_fsync_error_fails_the_journal_closed(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.append(1, b"a")
    writer.commit()
    writer.append(1, b"b")
    journal.inject_fault("fsync", errno.EIO)
    with pytest.raises(StoreFailed, match="fdatasync"):
        writer.commit()
    for call in (lambda: writer.append(1, b"c"), writer.flush, writer.sync, writer.commit):
        with pytest.raises(StoreFailed, match="failed closed"):
            call()
    assert writer.synced_seq == 1 and writer.failure is not None
    writer.close()


def test_a_write_error_fails_closed_and_leaves_whole_records(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.append(1, b"a")
    writer.commit()
    writer.append(1, b"b")
    journal.inject_fault("write", errno.EIO)
    with pytest.raises(StoreFailed, match="write"):
        writer.commit()
    with pytest.raises(StoreFailed):
        writer.append(1, b"c")
    writer.close()
    records, report = read_all(tmp_path)
    assert [payload for _, _, payload in records] == [b"a"] and report.torn_tail is None


def test_a_full_disk_refuses_the_batch_and_recovers(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.append(1, b"a")
    writer.commit()
    writer.append(1, b"b")
    journal.inject_fault("write", errno.ENOSPC)
    with pytest.raises(StoreFull, match="full"):
        writer.commit()
    assert writer.failure is None and writer.full_refusals == 1
    assert writer.append(1, b"c") == 2            # "b" was never stored: its seq is reused
    assert writer.commit() == 2
    writer.close()
    records, _ = read_all(tmp_path)
    assert [payload for _, _, payload in records] == [b"a", b"c"]


def test_a_real_file_size_limit_is_a_full_disk(tmp_path):
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from fastfanout._ext import journal
        from fastfanout.errors import StoreFull
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        writer = journal.Journal({str(tmp_path)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
        confirmed = 0
        try:
            while True:
                writer.append(1, b"z" * 1000)
                confirmed = writer.commit()
        except StoreFull:
            pass
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        writer.append(1, b"after")
        print(confirmed, writer.commit())
        writer.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    confirmed, last = map(int, done.stdout.split())
    assert confirmed > 5 and last == confirmed + 1
    records, report = read_all(tmp_path)
    assert [seq for seq, _, _ in records] == list(range(1, last + 1))
    assert records[-1][2] == b"after" and report.torn_tail is None


def test_whole_segments_before_a_sequence_are_removed(tmp_path):
    writer = journal.Journal(tmp_path, segment_bytes=4096)
    for _ in range(6):
        for _ in range(20):
            writer.append(1, b"w" * 50)
        writer.commit()
    bases = [base for base, _ in journal.segments(tmp_path)]
    removed = writer.remove_segments_before(bases[2])
    assert removed == 2
    assert [base for base, _ in journal.segments(tmp_path)] == bases[2:]
    assert writer.remove_segments_before(10**9) == len(bases) - 3   # never the current one
    writer.close()
    records, report = read_all(tmp_path)
    assert records and report.skipped == []


def test_compaction_removes_a_damaged_segment_it_read_and_leaves_what_is_no_segment(
        tmp_path):
    writer = journal.Journal(tmp_path, segment_bytes=4096)
    for _ in range(6):
        for _ in range(20):
            writer.append(1, b"w" * 50)
        writer.commit()
    writer.close()
    found = journal.segments(tmp_path)
    damaged = tmp_path / found[1][1]
    with open(damaged, "r+b") as file:
        file.write(b"FFJRNL0X")   # one byte of its magic: its records are still read
    stray = tmp_path / journal.segment_name(found[2][0] + 1)
    stray.write_bytes(journal.segment_header(0)[:8] + bytes(100))   # no good record
    cut_short = tmp_path / journal.segment_name(found[2][0] - 1)
    cut_short.write_bytes(b"FFJ")   # a roll a crash cut short (sorts just before [2])
    _, report = read_all(tmp_path)
    assert report.bad_headers == [damaged.name]
    assert report.bad_segments == [cut_short.name, stray.name]
    writer = journal.Journal(tmp_path, next_seq=report.last_seq + 1, segment_bytes=4096,
                             segment_index=len(found) + 2)
    writer.append(1, b"after")
    writer.commit()
    writer.remove_segments_before(10**9)
    writer.remove_segments_before(10**9)   # (the stray, kept, is not read again)
    writer.close()
    left = [name for _, name in journal.segments(tmp_path)]
    # The damaged segment goes once passed, like any other: kept, a restart would
    # replay its records again after the later segments (and their removes) are gone.
    assert stray.name in left and damaged.name not in left and cut_short.name not in left
    assert stray.read_bytes()[8:] == bytes(100)


def write_segments(directory, count=4):
    writer = journal.Journal(directory, segment_bytes=4096)
    while len(journal.segments(directory)) < count:
        for _ in range(20):
            writer.append(1, os.urandom(40))
        writer.commit()
    writer.close()
    return journal.segments(directory)


@pytest.mark.parametrize("byte", [0, 3, 8, 16, 20, 24])   # (28..31: no check)
def test_a_damaged_segment_header_loses_no_record(tmp_path, byte):
    found = write_segments(tmp_path)
    before, _ = read_all(tmp_path)
    damaged = tmp_path / found[1][1]
    with open(damaged, "r+b") as file:
        file.seek(byte)
        flipped = file.read(1)[0] ^ 0x10
        file.seek(byte)
        file.write(bytes([flipped]))
    after, report = read_all(tmp_path)
    assert after == before
    assert report.bad_headers == [damaged.name] and report.bad_segments == []
    assert report.skipped == [] and report.torn_tail is None


def test_the_name_of_a_segment_with_a_damaged_header_says_where_its_records_start(tmp_path):
    found = write_segments(tmp_path)
    before, _ = read_all(tmp_path)
    # A copy of the first segment under a later name: its records are below the name,
    # so they are none of its own (and its header, naming sequence 1, is wrong for it).
    copy = tmp_path / journal.segment_name(before[-1][0] + 1000)
    copy.write_bytes((tmp_path / found[0][1]).read_bytes())
    after, report = read_all(tmp_path)
    assert after == before and report.bad_segments == [copy.name]
    # Damage inside such a segment is skipped as anywhere, the records after it kept.
    with open(tmp_path / found[2][1], "r+b") as file:
        file.write(b"NOTMAGIC")
        file.seek(32 + 5)
        file.write(b"\xff")   # the first record's length
    after, report = read_all(tmp_path)
    (skipped,) = report.skipped
    assert skipped["segment"] == found[2][1] and skipped["offset"] == 32
    assert skipped["after_seq"] == found[2][0] - 1
    assert [seq for seq, _, _ in after] == [
        seq for seq, _, _ in before if seq < found[2][0] or seq >= skipped["next_seq"]]
    assert report.bad_headers == [found[2][1]]


def test_a_copy_of_a_segment_under_a_name_in_its_range_is_read_once(tmp_path):
    # A segment copied under a name inside the sequences already read (a backup put
    # back beside the live files): its records from the name on passed the name's check
    # and were replayed a second time (a durability hunt, 2026-12-07: 241 duplicated
    # messages of 1,000).
    found = write_segments(tmp_path)
    before, _ = read_all(tmp_path)
    source = tmp_path / found[1][1]
    copy = tmp_path / journal.segment_name(found[1][0] + 5)
    copy.write_bytes(source.read_bytes())
    first_of_next = found[2][0]
    after, report = read_all(tmp_path)
    assert after == before
    assert report.bad_headers == [copy.name]   # its header names another sequence
    # all of them, those below its name too (they were a skipped "bad stretch")
    assert report.duplicates == [{"segment": copy.name,
                                  "records": first_of_next - found[1][0],
                                  "first_seq": found[1][0],
                                  "last_seq": first_of_next - 1}]
    assert report.skipped == [] and report.missing == []


def within(seconds, function):
    """``function()``'s result, failing (not hanging) past ``seconds``."""
    result = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function} still running after {seconds} s"
    return result[0]


def test_entries_named_like_segments_that_are_no_regular_files_are_never_opened(tmp_path):
    found = write_segments(tmp_path)
    before, _ = read_all(tmp_path)
    fifo = tmp_path / journal.segment_name(found[1][0] + 1)
    os.mkfifo(fifo)   # opening it to read would block until a writer came
    directory = tmp_path / journal.segment_name(found[2][0] + 1)
    directory.mkdir()
    dangling = tmp_path / journal.segment_name(found[3][0] + 1)
    dangling.symlink_to(tmp_path / "nowhere")
    try:
        after, report = within(5, lambda: read_all(tmp_path))
        assert after == before and report.bad_headers == []
        assert report.bad_segments == [fifo.name, directory.name, dangling.name]
        writer = journal.Journal(tmp_path, next_seq=report.last_seq + 1,
                                 segment_bytes=4096, segment_index=len(found) + 3)
        assert within(5, lambda: writer.remove_segments_before(10**9)) == len(found)
        writer.close()
        assert fifo.is_fifo() and directory.is_dir() and dangling.is_symlink()
    finally:   # a reader blocked on the FIFO would now go on (and the thread end)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


@pytest.mark.parametrize("kind", [0, 256, -1])
def test_bad_kinds_are_refused(tmp_path, kind):
    writer = journal.Journal(tmp_path)
    with pytest.raises(InvalidArgument, match="kind"):
        writer.append(kind, b"x")
    assert writer.next_seq == 1
    writer.close()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="segment_bytes"):
        journal.Journal(tmp_path, segment_bytes=100)
    with pytest.raises(InvalidArgument, match="next_seq"):
        journal.Journal(tmp_path, next_seq=0)
    with pytest.raises(InvalidArgument, match="operation"):
        journal.inject_fault("read", errno.EIO)


# -- the writer thread (pipelined group commit) -------------------------------------------

def wait_readable(fd, seconds=10.0):
    import select

    readable, _, _ = select.select([fd], [], [], seconds)
    return bool(readable)


def test_the_writer_thread_writes_a_batch_while_the_next_is_appended(tmp_path):
    writer = journal.Journal(tmp_path)
    fd = writer.start_writer()
    assert writer.start_writer() == fd == writer.writer_fd   # once
    payloads = [os.urandom(random.randrange(0, 200)) for _ in range(150)]
    for payload in payloads[:100]:
        writer.append(2, payload)
    assert writer.commit_begin(sync=True) == 100
    assert writer.busy
    for payload in payloads[100:]:   # the next batch gathers meanwhile
        writer.append(3, payload)
    assert wait_readable(fd)          # the eventfd says the batch is done
    assert writer.poll()
    assert not writer.busy
    assert not wait_readable(fd, 0)   # drained: a poller is not woken again for it
    assert (writer.written_seq, writer.synced_seq, writer.syncs) == (100, 100, 1)
    assert writer.commit_begin(sync=False) == 150   # written, not synced
    assert writer.poll(wait=True)
    assert (writer.written_seq, writer.synced_seq, writer.syncs) == (150, 100, 1)
    assert writer.commit_begin(sync=True) == 150     # nothing to write: only the sync
    assert writer.poll(wait=True) and writer.synced_seq == 150
    writer.close()
    records, report = read_all(tmp_path)
    assert report.torn_tail is None and not report.skipped
    assert [(seq, payload) for seq, _, payload in records] == list(
        enumerate(payloads, start=1))
    assert [kind for _, kind, _ in records] == [2] * 100 + [3] * 50


def test_every_other_call_waits_for_the_batch_in_flight(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.start_writer()
    writer.append(2, b"first")
    writer.commit_begin(sync=False)
    writer.append(2, b"second")
    assert writer.commit() == 2      # the batch in flight first, then the rest
    assert not writer.busy and writer.synced_seq == 2
    writer.append(2, b"third")
    writer.commit_begin(sync=True)
    writer.close()                   # waits for it, stops the thread
    assert [payload for _, _, payload in read_all(tmp_path)[0]] == [
        b"first", b"second", b"third"]


def test_a_full_disk_under_the_writer_drops_the_batch_and_what_followed(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.start_writer()
    writer.append(2, b"kept")
    writer.commit_begin(sync=True)
    assert writer.poll(wait=True)
    journal.inject_fault("write", errno.ENOSPC)
    writer.append(2, b"refused")
    writer.commit_begin(sync=True)
    writer.append(2, b"gathered meanwhile")   # its sequence follows the refused one
    with pytest.raises(StoreFull):
        writer.poll(wait=True)
    assert (writer.drops, writer.full_refusals, writer.buffered_bytes) == (1, 1, 0)
    assert writer.next_seq == 2               # both sequences are given out again
    writer.append(2, b"after")
    writer.commit_begin(sync=True)
    assert writer.poll(wait=True)
    writer.close()
    assert [(seq, payload) for seq, _, payload in read_all(tmp_path)[0]] == [
        (1, b"kept"), (2, b"after")]


def _about(seq, tail=b""):
    """A payload naming the record ``seq`` (as a settle names its enqueue record)."""
    return seq.to_bytes(8, "little") + tail


@pytest.mark.parametrize("writer_thread", [False, True])
def test_a_full_disk_keeps_the_records_about_written_ones(tmp_path, writer_thread):
    # A settle answered while the disk was full was dropped with its batch: the acked
    # message came back at the next restart (a durability hunt, 2026-12-07). Records of
    # the kinds keep_on_full names, about a record in the file, stay buffered.
    writer = journal.Journal(tmp_path)
    writer.keep_on_full([4, 5])
    if writer_thread:
        writer.start_writer()
    assert writer.append(2, b"in the file") == 1
    writer.commit()
    journal.inject_fault("write", errno.ENOSPC)
    writer.append(4, _about(1, b"kept"))          # about seq 1: kept
    refused = writer.append(2, b"refused")        # seq 3: dropped
    writer.append(4, _about(refused, b"gone"))    # about the refused record: dropped
    writer.append(3, _about(1, b"other kind"))    # not a kept kind: dropped
    with pytest.raises(StoreFull):
        if writer_thread:
            writer.commit_begin(sync=True)
            writer.append(5, _about(1, b"meanwhile"))   # gathered while it was written
            writer.poll(wait=True)
        else:
            writer.commit()
    kept = [b"kept", b"meanwhile"] if writer_thread else [b"kept"]
    assert writer.kept_records == len(kept) and writer.drops == 1
    assert writer.next_seq == 2 + len(kept)      # renumbered from the first given out
    assert writer.append(2, b"after") == 2 + len(kept)
    writer.commit()
    writer.close()
    records = [(seq, kind, payload) for seq, kind, payload in read_all(tmp_path)[0]]
    expected = [(1, 2, b"in the file"), (2, 4, _about(1, b"kept"))]
    if writer_thread:
        expected.append((3, 5, _about(1, b"meanwhile")))
    expected.append((len(expected) + 1, 2, b"after"))
    assert records == expected


def test_discard_buffered_forgets_what_was_not_written(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.append(2, b"written")
    writer.commit()
    writer.append(4, _about(1))
    writer.discard_buffered()
    assert writer.buffered_bytes == 0 and writer.next_seq == 2
    assert writer.append(2, b"next") == 2
    writer.commit()
    writer.close()
    assert [payload for _, _, payload in read_all(tmp_path)[0]] == [b"written", b"next"]


def test_a_roll_keeps_a_current_segment_that_holds_no_record_yet(tmp_path):
    # A roll whose snapshot a full disk refused leaves the new segment with its header
    # alone; the next roll took that file for one a crash left behind and deleted it:
    # the journal wrote on into the deleted file (on a disk too full to make it again),
    # and every answered publish after was lost (a durability hunt, 2026-12-07).
    writer = journal.Journal(tmp_path)
    writer.append(2, b"a")
    writer.commit()
    assert writer.roll() is True
    current = os.stat(tmp_path / writer.segment).st_ino
    assert writer.roll() is False            # nothing in it yet: it stays the current one
    assert os.stat(tmp_path / writer.segment).st_ino == current
    writer.append(2, b"b")
    writer.commit()
    writer.close()
    assert [payload for _, _, payload in read_all(tmp_path)[0]] == [b"a", b"b"]


def test_keep_on_full_takes_kinds_below_32(tmp_path):
    writer = journal.Journal(tmp_path)
    with pytest.raises(ValueError, match="from 1 to 31"):
        writer.keep_on_full([32])
    writer.close()


def test_an_fsync_error_under_the_writer_fails_the_journal_closed(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.start_writer()
    journal.inject_fault("fsync", errno.EIO)
    writer.append(2, b"x")
    writer.commit_begin(sync=True)
    with pytest.raises(StoreFailed):
        writer.poll(wait=True)
    assert writer.synced_seq == 0 and writer.failure is not None
    with pytest.raises(StoreFailed):
        writer.append(2, b"y")
    writer.close()


def test_with_a_writer_old_segments_are_unlinked_by_a_thread(tmp_path):
    writer = journal.Journal(tmp_path, segment_bytes=4096, auto_roll=False)
    writer.start_writer()
    for _ in range(3):
        writer.append(2, b"x" * 100)
        writer.roll()
    assert len(journal.segments(tmp_path)) == 4
    assert writer.remove_segments_before(writer.next_seq) == 3
    assert writer.remove_segments_before(writer.next_seq) == 0   # not listed twice
    writer.close()   # waits for the remover
    assert [name for _, name in journal.segments(tmp_path)] == [writer.segment]


@pytest.mark.parametrize("with_writer", [False, True])
def test_a_segment_that_cannot_be_removed_keeps_the_later_ones(
        tmp_path, monkeypatch, with_writer):
    # until 2026-12-05 the remover thread unlinked the later segments around one it could
    # not unlink (a restart then replayed its copies without their remove records: acked
    # messages came back), and without a writer the unlink's PermissionError came out of
    # the commit that compacted
    writer = journal.Journal(tmp_path, segment_bytes=4096, auto_roll=False)
    if with_writer:
        writer.start_writer()
    for _ in range(4):
        writer.append(2, b"x" * 100)
        writer.roll()
    names = [name for _, name in journal.segments(tmp_path)]
    assert len(names) == 5
    unlink = os.unlink

    def refuse_the_oldest(path, *args, **kwargs):
        if os.path.basename(path) == names[0]:
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_the_oldest)
    writer.remove_segments_before(writer.next_seq)
    wait_until(lambda: writer.removal_errors >= 1)   # (with a writer, its thread's)
    writer.remove_segments_before(writer.next_seq)   # tried again: the same
    if with_writer:
        writer.close()   # waits for the remover
    monkeypatch.setattr(os, "unlink", unlink)
    assert [name for _, name in journal.segments(tmp_path)] == names
    assert writer.removal_errors >= 1 and names[0] in writer.removal_error
    if not with_writer:   # once it can go, the rest go with it
        assert writer.remove_segments_before(writer.next_seq) == 4
        assert [name for _, name in journal.segments(tmp_path)] == [writer.segment]
        writer.close()


def test_a_small_batch_that_needs_no_sync_is_written_by_the_caller(tmp_path):
    writer = journal.Journal(tmp_path)
    fd = writer.start_writer()
    writer.append(2, b"small")
    assert writer.commit_begin(sync=False) == 1
    assert not writer.busy and writer.written_seq == 1   # done when it returns
    assert not wait_readable(fd, 0)                       # the writer was not woken
    assert (writer.inline_writes, writer.writer_batches) == (1, 0)
    writer.append(2, b"synced")
    writer.commit_begin(sync=True)                        # a sync goes to the writer
    assert writer.busy and writer.poll(wait=True) and writer.synced_seq == 2
    body = b"x" * 1024
    for _ in range(journal.INLINE_WRITE_MAX_BYTES // len(body) + 1):
        writer.append(2, body)                            # past the limit: the writer
    writer.commit_begin(sync=False)
    assert writer.busy and writer.poll(wait=True)
    assert (writer.inline_writes, writer.writer_batches) == (1, 2)
    writer.close()
    assert len(read_all(tmp_path)[0]) == writer.written_seq == writer.next_seq - 1


def test_a_full_disk_under_an_inline_write_drops_the_batch_at_once(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.start_writer()
    writer.append(2, b"kept")
    writer.commit_begin(sync=False)
    journal.inject_fault("write", errno.ENOSPC)
    writer.append(2, b"refused")
    with pytest.raises(StoreFull):
        writer.commit_begin(sync=False)
    assert (writer.drops, writer.full_refusals, writer.buffered_bytes) == (1, 1, 0)
    writer.append(2, b"after")
    writer.commit_begin(sync=False)
    writer.close()
    assert [(seq, payload) for seq, _, payload in read_all(tmp_path)[0]] == [
        (1, b"kept"), (2, b"after")]


def test_a_slow_inline_write_sends_the_next_batches_to_the_writer(tmp_path):
    writer = journal.Journal(tmp_path)
    writer.start_writer()
    journal.inject_fault("slow_write", journal.INLINE_WRITE_SLOW_NS // 1000 * 3)
    writer.append(2, b"slow")
    writer.commit_begin(sync=False)
    assert not writer.busy and writer.slow_inline_writes == 1
    writer.append(2, b"next")
    writer.commit_begin(sync=False)          # within INLINE_WRITE_PAUSE_NS of it
    assert writer.busy and writer.poll(wait=True)
    assert (writer.inline_writes, writer.writer_batches) == (1, 1)
    writer.close()
    assert [payload for _, _, payload in read_all(tmp_path)[0]] == [b"slow", b"next"]


@pytest.mark.parametrize("writer_thread", [False, True])
def test_a_record_kept_across_two_full_disk_drops_is_counted_once(tmp_path, writer_thread):
    # kept_records (storage["kept_settles"]) counted a settle again at each drop that
    # kept it: a settle kept across two refused writes counted twice
    writer = journal.Journal(tmp_path)
    writer.keep_on_full([4])
    if writer_thread:
        writer.start_writer()
    writer.append(2, b"in the file")
    writer.commit()

    def settle_on_a_full_disk(payload: bytes) -> None:
        journal.inject_fault("write", errno.ENOSPC)
        writer.append(4, _about(1, payload))
        with pytest.raises(StoreFull):
            writer.commit()

    settle_on_a_full_disk(b"settle")
    assert writer.kept_records == 1
    settle_on_a_full_disk(b"another")
    assert writer.kept_records == 2 and writer.drops == 2   # the first counted once
    writer.commit()
    settle_on_a_full_disk(b"after the write")
    assert writer.kept_records == 3
    writer.commit()
    writer.close()
    assert [payload[8:] for _, kind, payload in read_all(tmp_path)[0] if kind == 4] == [
        b"settle", b"another", b"after the write"]
