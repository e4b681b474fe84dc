"""Property: any text stored in the database reads back from the export CSV exactly,
apart from the documented injection prefix, and no cell ever starts a formula."""

import csv
import io
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from voicesurvey_exports.app_db.contacts import copy_terminal_contacts
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.schema import contacts, survey_responses
from voicesurvey_exports.exports.csv_format import FORMULA_PREFIXES, INJECTION_GUARD, render_spool

from .conftest import AppData

# PostgreSQL text cannot hold NUL; everything else Unicode can be stored, so generate it.
stored_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=200,
) | st.sampled_from([f"{prefix}rest" for prefix in FORMULA_PREFIXES])


def expected_cell(stored: str | None) -> str:
    if stored is None:
        return ""
    return INJECTION_GUARD + stored if stored.startswith(FORMULA_PREFIXES) else stored


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(external_id=stored_text, answers=st.lists(st.none() | stored_text, min_size=3, max_size=3))
def test_stored_text_reads_back_exactly_and_never_starts_a_formula(
    postgres_url, tmp_path, external_id, answers
):
    engine = get_engine(postgres_url)
    data = AppData(engine)
    campaign = data.campaign()
    contact = data.contact(campaign, "completed", external_contact_id=external_id)
    data.response(contact, campaign, *answers)
    spool, out = tmp_path / f"{uuid.uuid4()}.spool", tmp_path / f"{uuid.uuid4()}.csv"
    try:
        with open(spool, "wb") as spool_file:
            copy_terminal_contacts(engine, campaign, spool_file)
        render_spool(spool, out)
        rows = list(csv.reader(io.StringIO(out.read_bytes().decode("utf-8"), newline="")))
    finally:
        with engine.begin() as conn:
            conn.execute(delete(survey_responses).where(survey_responses.c.campaign_id == campaign))
            conn.execute(delete(contacts).where(contacts.c.campaign_id == campaign))

    assert len(rows) == 2
    row = rows[1]
    assert row[2] == expected_cell(external_id)
    assert row[7:10] == [expected_cell(answer) for answer in answers]
    for cell in (row[2], *row[7:10]):
        assert not cell.startswith(FORMULA_PREFIXES)
