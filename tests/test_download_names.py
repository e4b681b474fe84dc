"""The name a download link saves under: the campaign's own name (filename*), safe on
Windows, macOS and Linux, whatever the name holds."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import date
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicesurvey_exports.app_db.schema import COMPRESSIONS, FORMATS
from voicesurvey_exports.export_file.s3_object import (
    FORMAT_SUFFIXES,
    SUFFIXES,
    ExportObjects,
    download_filename,
    unicode_download_filename,
)

from .conftest import TEST_BUCKET

DAY = date(2026, 11, 28)


def test_the_campaigns_real_name_and_the_date():
    name = "Kundenzufriedenheit Q4 – Große Qualität"
    assert unicode_download_filename(name, DAY) == f"{name} 2026-11-28.csv"
    assert download_filename(name, DAY) == "Kundenzufriedenheit-Q4-Groe-Qualitat-2026-11-28.csv"


def test_characters_no_file_system_takes_or_that_hide_or_reorder_text_are_replaced():
    # "\u202e" (right-to-left override) would show "...vsc.exe" for "...exe.csv".
    name = 'a/b\\c:d*e?f"g<h>i|j\x00k\u202el\u2028m\tn'
    assert unicode_download_filename(name, DAY) == "a-b-c-d-e-f-g-h-i-j-k-l-m-n 2026-11-28.csv"
    assert unicode_download_filename(" ..hidden.. ", DAY) == "hidden 2026-11-28.csv"
    assert unicode_download_filename("///", DAY) == "campaign-export 2026-11-28.csv"


@given(st.text(max_size=400), st.sampled_from([".csv", ".csv.gz"]))
def test_any_name_gives_a_file_name_every_system_accepts(name, suffix):
    filename = unicode_download_filename(name, DAY, suffix)
    assert filename.endswith(f" 2026-11-28{suffix}")
    assert len(filename.encode("utf-8")) <= 255
    assert not filename.startswith((".", " "))
    assert not set(filename) & set('<>:"/\\|?*')
    assert all(
        unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
        for char in filename
    )


def link_response(url: str) -> tuple[str, str, str]:
    """(ASCII filename, filename*, content type) a presigned link makes S3 answer with."""
    query = parse_qs(urlparse(url).query)
    disposition = query["response-content-disposition"][0]
    fallback = disposition.split('filename="')[1].split('"')[0]
    star = unquote(disposition.split("; filename*=UTF-8''")[1])
    return fallback, star, query["response-content-type"][0]


def test_every_compression_option_has_its_key_ending():
    assert set(SUFFIXES) == set(COMPRESSIONS)


@pytest.mark.parametrize(
    ("file_format", "compression", "suffix", "content_type"),
    [
        ("csv", "none", ".csv", "text/csv; charset=utf-8"),
        ("csv", "gzip", ".csv.gz", "application/gzip"),
        ("jsonl", "none", ".jsonl", "application/x-ndjson"),
        ("jsonl", "gzip", ".jsonl.gz", "application/gzip"),
        ("parquet", "none", ".parquet", "application/vnd.apache.parquet"),
        (
            "xlsx",
            "none",
            ".xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
    ],
)
def test_a_link_names_and_types_the_download_as_its_key_says(
    s3_client, file_format, compression, suffix, content_type
):
    objects = ExportObjects(s3_client, TEST_BUCKET, "exports/", 600)
    campaign_id, job_id = uuid.uuid4(), uuid.uuid4()
    key = objects.key(campaign_id, job_id, compression, file_format=file_format)
    assert key == f"exports/{campaign_id}/{job_id}{suffix}"

    url, _ = objects.sign(key, "Große Qualität", DAY)

    assert link_response(url) == (
        f"Groe-Qualitat-2026-11-28{suffix}",
        f"Große Qualität 2026-11-28{suffix}",
        content_type,
    )


def test_every_format_has_its_key_ending():
    assert set(FORMAT_SUFFIXES) == set(FORMATS)


def test_an_unknown_compression_has_no_key():
    with pytest.raises(ValueError, match="compression 'zip' is not one of"):
        ExportObjects(None, TEST_BUCKET, "exports/", 600).key(uuid.uuid4(), uuid.uuid4(), "zip")
