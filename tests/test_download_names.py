"""The name a download link saves under: the campaign's own name (filename*), safe on
Windows, macOS and Linux, whatever the name holds."""

from __future__ import annotations

import unicodedata
from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from voicesurvey_exports.export_file.s3_object import download_filename, unicode_download_filename

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


@given(st.text(max_size=400))
def test_any_name_gives_a_file_name_every_system_accepts(name):
    filename = unicode_download_filename(name, DAY)
    assert filename.endswith(" 2026-11-28.csv")
    assert len(filename.encode("utf-8")) <= 255
    assert not filename.startswith((".", " "))
    assert not set(filename) & set('<>:"/\\|?*')
    assert all(
        unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
        for char in filename
    )
