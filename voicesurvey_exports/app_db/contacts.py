"""The export's one query: a campaign's contacts in a terminal state, with their answers."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, select

from .schema import TERMINAL_CONTACT_STATES, contacts, survey_responses


def terminal_contacts_query(campaign_id: uuid.UUID) -> Select:
    """Rows in CSV column order, ordered by contact id (no phone numbers or emails)."""
    return (
        select(
            contacts.c.campaign_id,
            contacts.c.id.label("contact_id"),
            contacts.c.external_contact_id,
            contacts.c.state.label("outcome"),
            contacts.c.attempts_count,
            contacts.c.last_attempt_at,
            survey_responses.c.completed_at,
            survey_responses.c.q1_answer,
            survey_responses.c.q2_answer,
            survey_responses.c.q3_answer,
        )
        .select_from(
            contacts.outerjoin(survey_responses, survey_responses.c.contact_id == contacts.c.id)
        )
        .where(
            contacts.c.campaign_id == campaign_id,
            contacts.c.state.in_(TERMINAL_CONTACT_STATES),
        )
        .order_by(contacts.c.id)
    )
