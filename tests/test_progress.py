"""progress_percent of a running export: null while pending, 0 once claimed, rising phase
by phase and never back to 100; reports are throttled, a database error while reporting
does not fail the export, and a cancel asked for mid-export stops it."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid

import dagster as dg
import pytest
from sqlalchemy import event, text

from voicesurvey_exports.app_db import export_jobs
from voicesurvey_exports.app_db.contacts import COPY_CHUNK_BYTES, copy_terminal_contacts
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.export_file.csv_format import render_spool
from voicesurvey_exports.export_file.s3_object import ExportObjects
from voicesurvey_exports.pipeline.failures import ExportCancelled
from voicesurvey_exports.pipeline.progress import EXTRACT, RENDER, UPLOAD, ExportProgress

from .conftest import TEST_BUCKET, AppData
from .dagster_harness import materialize_export

RUN_ID = "run-exporting"


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def pg(postgres_url) -> AppData:
    return AppData(get_engine(postgres_url))


@contextlib.contextmanager
def trigger_on_progress(engine, name: str, body: str, when: str, timing: str = "AFTER"):
    """A PostgreSQL trigger on export_jobs.progress_percent for the duration of a test."""
    with engine.begin() as conn:
        conn.execute(
            text(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ {body} $$")
        )
        conn.execute(
            text(
                f"CREATE TRIGGER {name} {timing} UPDATE OF progress_percent ON export_jobs "
                f"FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {name}()"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER {name} ON export_jobs"))
            conn.execute(text(f"DROP FUNCTION {name}()"))


@contextlib.contextmanager
def counted_progress_reports(engine):
    """Counts export_jobs.report_progress's UPDATEs on the engine (the pipeline's, too:
    get_engine keeps one engine per URL and process)."""
    reports = []

    def count(_conn, _cursor, statement, *_args):
        if statement.startswith("UPDATE export_jobs SET progress_percent=CASE"):
            reports.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield reports
    finally:
        event.remove(engine, "before_cursor_execute", count)


def running_job(app: AppData, campaign, run_id: str = RUN_ID) -> uuid.UUID:
    with app.engine.begin() as conn:
        job = export_jobs.insert_job(conn, campaign, None, status="running", dagster_run_id=run_id)
    return job.id


def add_long_contacts(app: AppData, campaign, count: int) -> None:
    """About 330 bytes per spool row: `count` 60,000 makes 20 MB, twenty COPY chunks."""
    with app.engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO contacts (campaign_id, external_contact_id, phone_number, state)
            SELECT :c, repeat('x', 300) || g, '+39', 'refused' FROM generate_series(1, :n) g
        """),
            {"c": campaign, "n": count},
        )


def test_a_pending_job_shows_no_progress_and_a_claimed_one_shows_zero(app_data, engine):
    campaign = app_data.campaign()
    with engine.begin() as conn:
        pending = export_jobs.insert_job(conn, campaign, app_data.user())
    assert pending.to_json()["progress_percent"] is None

    with engine.begin() as conn:
        claimed = export_jobs.claim_job(conn, pending.id, RUN_ID, ["pending"])
    assert claimed.to_json()["progress_percent"] == 0


def test_a_run_that_takes_a_job_over_keeps_the_progress_its_parent_reached(pg):
    job_id = running_job(pg, pg.campaign(), run_id="run-whose-worker-died")
    with pg.engine.begin() as conn:
        assert export_jobs.report_progress(conn, job_id, "run-whose-worker-died", 60)
        assert export_jobs.claim_job(conn, job_id, "its-retry", ["running"]) is not None
    assert pg.job_row(job_id)["progress_percent"] == 60

    ExportProgress(pg.engine, job_id, "its-retry").finished(EXTRACT)  # 45: not lower
    assert pg.job_row(job_id)["progress_percent"] == 60


def test_progress_rises_through_each_phases_end_to_100_and_never_goes_back(
    instance, postgres_url, pg, s3_client
):
    campaign = pg.campaign()
    for state in ("completed", "refused", "not_reached"):
        contact = pg.contact(campaign, state)
        pg.response(contact, campaign, "line one\nline two")
    job_id = pg.export_job(campaign, pg.user())
    with pg.engine.begin() as conn:
        conn.execute(text("CREATE TABLE progress_seen (n bigserial, job_id uuid, percent int)"))
    try:
        with trigger_on_progress(
            pg.engine,
            "record_progress",
            "BEGIN INSERT INTO progress_seen (job_id, percent) "
            "VALUES (NEW.id, NEW.progress_percent); RETURN NEW; END",
            "NEW.progress_percent IS DISTINCT FROM OLD.progress_percent",
        ):
            assert materialize_export(instance, postgres_url, campaign, job_id).success
        with pg.engine.connect() as conn:
            seen = list(
                conn.execute(
                    text("SELECT percent FROM progress_seen WHERE job_id = :j ORDER BY n"),
                    {"j": job_id},
                ).scalars()
            )
    finally:
        with pg.engine.begin() as conn:
            conn.execute(text("DROP TABLE progress_seen"))

    assert seen[0] == 0 and seen[-1] == 100  # claimed, then completed
    assert seen == sorted(seen)
    assert {EXTRACT.end, RENDER.end, UPLOAD.end} <= set(seen)  # each phase's end, as it ends
    assert pg.job_row(job_id)["progress_percent"] == 100


def test_a_200_row_export_reports_progress_at_most_once_per_phase(
    instance, postgres_url, pg, s3_client
):
    campaign = pg.campaign()
    for i in range(200):
        pg.contact(campaign, ("completed", "refused")[i % 2])
    job_id = pg.export_job(campaign, pg.user())

    with counted_progress_reports(pg.engine) as reports:
        assert materialize_export(instance, postgres_url, campaign, job_id).success

    # One chunk, one batch, one part: each phase's only callback comes as it ends, and
    # the report of its end does not repeat it; no report for a callback within a second.
    assert 1 <= len(reports) <= 3
    assert pg.job_row(job_id)["progress_percent"] == 100


def test_twenty_thousand_callbacks_make_at_most_one_report_a_second(pg):
    job_id = running_job(pg, pg.campaign())
    progress = ExportProgress(pg.engine, job_id, RUN_ID, total_rows=20_000)

    with counted_progress_reports(pg.engine) as reports:
        started = time.monotonic()
        for rows in range(1, 20_001):
            progress.extracted(rows)
        elapsed = time.monotonic() - started

    # Whatever the machine's speed: one report per full second at most.
    assert len(reports) <= 1 + elapsed / progress.interval_seconds
    progress.finished(EXTRACT)
    assert pg.job_row(job_id)["progress_percent"] == EXTRACT.end


def test_copy_and_render_call_back_per_chunk_and_batch_with_counts_rising_to_the_rows(pg, tmp_path):
    campaign = pg.campaign()
    add_long_contacts(pg, campaign, 60_000)
    extracted, rendered = [], []
    spool, csv_file = tmp_path / "spool.csv", tmp_path / "export.csv"

    with open(spool, "wb") as spool_file:
        rows = copy_terminal_contacts(pg.engine, campaign, spool_file, extracted.append)
    stats = render_spool(spool, csv_file, on_batch=rendered.append)

    for counts in (extracted, rendered):
        assert 5 <= len(counts) <= 100  # 20 MB: per 1 MiB chunk, per 2 MiB group of blocks
        assert counts == sorted(set(counts)) and counts[-1] == rows == stats.row_count


def test_a_cancel_asked_for_mid_copy_stops_the_extract_with_export_cancelled(pg, tmp_path):
    campaign = pg.campaign()
    add_long_contacts(pg, campaign, 60_000)
    job_id = running_job(pg, campaign)
    # Reports on every chunk, so that the one after the user's request sees it.
    progress = ExportProgress(pg.engine, job_id, RUN_ID, total_rows=60_000, interval_seconds=0)
    chunks = []

    def on_rows(rows: int) -> None:
        progress.extracted(rows)
        chunks.append(rows)
        if len(chunks) == 2:  # the user asks while rows flow
            with pg.engine.begin() as conn:
                assert export_jobs.request_cancel(conn, job_id) is not None

    spool = tmp_path / "spool.csv"
    with (
        pytest.raises(ExportCancelled, match=f"export job {job_id} was cancelled"),
        open(spool, "wb") as spool_file,
    ):
        copy_terminal_contacts(pg.engine, campaign, spool_file, on_progress=on_rows)

    assert len(chunks) == 2  # stopped at the next chunk's report
    assert spool.stat().st_size <= 3 * COPY_CHUNK_BYTES  # not the whole 20 MB
    assert 0 < pg.job_row(job_id)["progress_percent"] < EXTRACT.end
    with pg.engine.connect() as conn:  # the engine still serves
        assert conn.execute(text("SELECT count(*) FROM contacts")).scalar_one() == 60_000
    with pytest.raises(ExportCancelled):  # it stays stopped
        progress.finished(EXTRACT)


def test_a_cancel_asked_for_mid_upload_stops_it_and_leaves_no_object(pg, s3_client, tmp_path):
    job_id = running_job(pg, pg.campaign())
    progress = ExportProgress(pg.engine, job_id, RUN_ID, interval_seconds=0)
    csv_file = tmp_path / "export.csv"
    csv_file.write_bytes(os.urandom(30 * (1 << 20)))  # four multipart parts
    objects = ExportObjects(s3_client, TEST_BUCKET, "exports/", 600)
    key = f"exports/{job_id}.csv"
    sent = []

    def on_bytes(bytes_sent: int, total_bytes: int) -> None:
        if not sent:  # the user asks as the first bytes go out
            with pg.engine.begin() as conn:
                export_jobs.request_cancel(conn, job_id)
        sent.append(bytes_sent)
        progress.uploaded(bytes_sent, total_bytes)

    with pytest.raises(ExportCancelled):
        objects.upload(csv_file, key, on_bytes=on_bytes)

    assert max(sent) < csv_file.stat().st_size
    assert s3_client.list_objects_v2(Bucket=TEST_BUCKET).get("KeyCount") == 0
    assert not s3_client.list_multipart_uploads(Bucket=TEST_BUCKET).get("Uploads")


def test_a_run_that_no_longer_owns_the_job_is_stopped_at_its_next_report(pg):
    job_id = running_job(pg, pg.campaign(), run_id="the-retry-that-took-it-over")
    progress = ExportProgress(pg.engine, job_id, RUN_ID)

    with pytest.raises(ExportCancelled):
        progress.finished(RENDER)
    assert pg.job_row(job_id)["progress_percent"] == 0  # the owner's progress, untouched


def test_an_export_whose_progress_reports_fail_still_completes(
    instance, postgres_url, pg, s3_client
):
    campaign = pg.campaign()
    pg.contact(campaign, "completed")
    job_id = pg.export_job(campaign, pg.user())

    with trigger_on_progress(
        pg.engine,
        "refuse_progress",
        "BEGIN RAISE EXCEPTION 'injected: progress refused'; END",
        "NEW.progress_percent BETWEEN 1 AND 99",
        timing="BEFORE",
    ):
        result = materialize_export(instance, postgres_url, campaign, job_id)

    assert result.success
    job = pg.job_row(job_id)
    assert job["status"] == "completed" and job["progress_percent"] == 100
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == logging.WARNING
    ]
    assert any(
        f"progress of export job {job_id}: 45% not recorded" in message
        and "injected: progress refused" in message
        for message in warnings
    ), warnings


def test_a_count_that_fails_leaves_the_phase_at_its_start_and_the_export_going(
    pg, postgres_server, caplog
):
    job_id = running_job(pg, pg.campaign())
    missing = get_engine(f"{postgres_server}/vse_missing_{uuid.uuid4().hex[:10]}")

    def count_rows() -> int:
        with missing.connect() as conn:  # a database that is not there
            return conn.execute(text("SELECT 1")).scalar_one()

    progress = ExportProgress(pg.engine, job_id, RUN_ID, count_rows, interval_seconds=0)
    with caplog.at_level(logging.WARNING):
        progress.extracted(1000)

    assert f"progress of export job {job_id}: its total not counted" in caplog.text
    assert pg.job_row(job_id)["progress_percent"] == EXTRACT.start


LARGE_CAMPAIGN = 1_500_000


@pytest.mark.soak
def test_a_large_export_shows_progress_between_its_phases_ends_rising_to_100(
    instance, create_postgres_database, s3_client
):
    """1,500,000 contacts (a database of their own), watched by a thread that polls the
    job row as the app would."""
    import threading

    from voicesurvey_exports.app_db.migrations import upgrade

    database_url = create_postgres_database("progress_soak")
    app = AppData(get_engine(database_url))
    upgrade(app.engine)
    campaign = app.campaign("Large")
    with app.engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO contacts (campaign_id, external_contact_id, phone_number, state,
                                  attempts_count, last_attempt_at)
            SELECT :c, 'CRM-' || g, '+39',
                   (ARRAY['completed','refused','not_reached','excluded']::contact_state[])
                   [1 + g % 4], 1 + g % 3, timestamptz '2026-11-01 08:00:00+00' + g * interval '1 s'
            FROM generate_series(1, :n) g"""),
            {"c": campaign, "n": LARGE_CAMPAIGN},
        )
        # Answers with line breaks: the extract's count of line ends runs ahead of its rows.
        conn.execute(
            text("""
            INSERT INTO survey_responses (contact_id, campaign_id, q1_answer, completed_at)
            SELECT id, campaign_id, 'Prima riga' || chr(10) || 'seconda riga', now()
            FROM contacts WHERE campaign_id = :c AND state = 'completed'"""),
            {"c": campaign},
        )
        conn.execute(text("ANALYZE"))
    job_id = app.export_job(campaign, app.user())
    seen: list[int | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            seen.append(app.job_row(job_id)["progress_percent"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = materialize_export(instance, database_url, campaign, job_id)
    finally:
        done.set()
        watcher.join()

    assert result.success
    job = app.job_row(job_id)
    assert job["total_records"] == LARGE_CAMPAIGN and job["progress_percent"] == 100
    values = [value for value in seen if value is not None]
    assert values == sorted(values)
    within_phases = {value for value in values if 0 < value < 100} - {
        EXTRACT.end,
        RENDER.end,
        UPLOAD.end,
    }
    assert within_phases, sorted(set(values))
