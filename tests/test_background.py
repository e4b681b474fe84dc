"""Reading ahead and writing behind (export_file/background.py), and the render that uses
them: order kept, errors raised on the caller's thread, no thread left running."""

import contextlib
import threading
import time
from pathlib import Path

import pytest

from voicesurvey_exports.export_file import csv_format
from voicesurvey_exports.export_file.background import WriteBehind, read_ahead


def background_threads() -> list[str]:
    return [
        thread.name
        for thread in threading.enumerate()
        if thread.name in ("read-ahead", "write-behind") and thread.is_alive()
    ]


def test_read_ahead_keeps_order_and_reads_at_most_depth_ahead():
    produced = []

    def items():
        for number in range(100):
            produced.append(number)
            yield number

    with contextlib.closing(read_ahead(items(), depth=3)) as ahead:
        assert next(ahead) == 0
        time.sleep(0.3)  # the reader runs ahead as far as it may
        # The one handed over, three queued, one read and waiting for room.
        assert len(produced) <= 5
        assert list(ahead) == list(range(1, 100))
    assert background_threads() == []


def test_read_ahead_raises_the_readers_error_after_the_items_before_it():
    def items():
        yield "row 1"
        yield "row 2"
        raise ValueError("row 3 is malformed")

    seen = []
    with (
        pytest.raises(ValueError, match="row 3 is malformed"),
        contextlib.closing(read_ahead(items(), depth=2)) as ahead,
    ):
        for item in ahead:
            seen.append(item)
    assert seen == ["row 1", "row 2"]
    assert background_threads() == []


def test_closing_read_ahead_early_stops_its_thread():
    def endless():
        number = 0
        while True:
            yield number
            number += 1

    with contextlib.closing(read_ahead(endless(), depth=2)) as ahead:
        assert [next(ahead), next(ahead)] == [0, 1]
    assert background_threads() == []


def test_write_behind_writes_everything_in_order_before_the_block_ends():
    written = []

    def slow_write(item):
        time.sleep(0.01)
        written.append(item)

    with WriteBehind(slow_write, depth=2) as behind:
        for number in range(20):
            behind.put(number)
    assert written == list(range(20))
    assert background_threads() == []


def test_a_failed_write_stops_the_writing_and_is_raised():
    written = []

    def write(item):
        if item == 3:
            raise OSError("No space left on device")
        written.append(item)

    with pytest.raises(OSError, match="No space left on device"), WriteBehind(write, 2) as behind:
        for number in range(50):
            behind.put(number)
    assert written == [0, 1, 2]  # nothing after the failed write
    assert background_threads() == []


def test_an_error_in_the_block_drops_what_is_not_written_yet():
    written, release = [], threading.Event()

    def write(item):
        release.wait(5)
        written.append(item)

    with pytest.raises(RuntimeError, match="cancelled"), WriteBehind(write, depth=3) as behind:
        for number in range(4):
            behind.put(number)
        # The writer is still on item 0 when the block fails; it finishes it later.
        threading.Timer(0.2, release.set).start()
        raise RuntimeError("cancelled")
    # The one being written when the block failed lands; the queued ones do not.
    assert written == [0]
    assert background_threads() == []


def spool_of(rows: int, path: Path) -> Path:
    line = (
        '"11111111-1111-1111-1111-111111111111","22222222-2222-2222-2222-222222222222",'
        '"CRM-1","completed",1,"2026-11-16 09:49:55+00","2026-11-16 09:52:55+00",'
        '"=SUM(A1:A9)","2",""\n'
    )
    path.write_text(line * rows)
    return path


def test_a_render_stopped_at_a_batch_raises_and_leaves_no_thread(tmp_path, monkeypatch):
    # Small blocks: many batches, so the reader and the writer are busy when it stops.
    monkeypatch.setattr(csv_format, "SPOOL_BLOCK_BYTES", 64 * 1024)
    monkeypatch.setattr(csv_format, "FORMAT_BYTES", 64 * 1024)
    spool = spool_of(20_000, tmp_path / "contacts.spool.csv")
    batches = []

    def on_batch(rows: int) -> None:
        batches.append(rows)
        if len(batches) == 3:
            raise RuntimeError("export job was cancelled")

    with pytest.raises(RuntimeError, match="was cancelled"):
        csv_format.render_spool(spool, tmp_path / "export.csv", on_batch=on_batch)
    assert len(batches) == 3
    assert background_threads() == []


@pytest.mark.parametrize("blocks_per_group", [1, 3])
def test_the_rendered_file_is_the_same_whatever_the_number_of_batches(
    tmp_path, monkeypatch, blocks_per_group
):
    spool = spool_of(20_000, tmp_path / "contacts.spool.csv")
    one_batch = csv_format.render_spool(spool, tmp_path / "one.csv")
    # Many small blocks, formatted one or three at a time (groups that end mid-file).
    monkeypatch.setattr(csv_format, "SPOOL_BLOCK_BYTES", 16 * 1024)
    monkeypatch.setattr(csv_format, "FORMAT_BYTES", blocks_per_group * 16 * 1024)
    many = []
    many_batches = csv_format.render_spool(spool, tmp_path / "many.csv", on_batch=many.append)
    assert len(many) > 50 // blocks_per_group
    assert many_batches == one_batch  # rows, bytes, outcomes and checksum
    assert (tmp_path / "many.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert "'=SUM(A1:A9)" in (tmp_path / "one.csv").read_text()
