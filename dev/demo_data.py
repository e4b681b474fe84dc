"""Deterministic demo data: campaigns in several states, users in every role, and
contacts in every state with awkward answers (accents, emoji, commas, quotes,
newlines, a formula). Inserted only into a database without campaigns, so starting
the demo again never duplicates it.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select

from voicesurvey_exports.app_db.schema import (
    CONTACT_STATES,
    campaigns,
    contacts,
    survey_responses,
    users,
)

SEED = 18


def demo_uuid(n: int) -> uuid.UUID:
    """Readable fixed ids, so the printed commands stay valid across starts."""
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012x}")


ADMIN_ID, MANAGER_ID, VIEWER_ID = demo_uuid(0xA001), demo_uuid(0xA002), demo_uuid(0xA003)
LARGE_CAMPAIGN_ID = demo_uuid(0xC001)


@dataclass(frozen=True)
class DemoCampaign:
    id: uuid.UUID
    name: str
    status: str
    language: str
    contacts: int
    states: tuple[str, ...]


DEMO_CAMPAIGNS = (
    DemoCampaign(
        LARGE_CAMPAIGN_ID,
        "Soddisfazione clienti — autunno 2026",
        "completed",
        "it",
        20_000,
        CONTACT_STATES,
    ),
    DemoCampaign(
        demo_uuid(0xC002),
        "Kundenzufriedenheit Q4 (Größe, Qualität)",
        "paused",
        "de",
        600,
        CONTACT_STATES,
    ),
    DemoCampaign(
        demo_uuid(0xC003),
        "Winter pilot: nobody reached yet",
        "running",
        "en",
        150,
        ("pending", "in_progress"),
    ),
    DemoCampaign(demo_uuid(0xC004), "Spring survey (draft)", "draft", "en", 0, ()),
)

ANSWERS = (
    "Sì, molto soddisfatto",
    "Servizio eccellente, personale gentile, tempi rapidi",
    'Il tecnico ha detto "domani", poi è venuto dopo una settimana',
    "Größtenteils zufrieden, aber die Wartezeit war zu lang",
    "Très bien 👍🎉",
    "Prima riga\nseconda riga, con virgola",
    "=SUM(A1:A9)",
    "-- niente da aggiungere",
    "No",
    "",
    None,
)


def seed_demo_data(engine: Engine) -> bool:
    """Insert the demo rows; return False (and change nothing) if campaigns already exist."""
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(campaigns)).scalar_one():
            return False
        rng = random.Random(SEED)
        # Fixed creation times too: the same seed gives the same rows, byte for byte.
        created = {"created_at": datetime(2026, 10, 20, 8, 0, tzinfo=UTC)}
        conn.execute(
            users.insert(),
            [
                {
                    "id": ADMIN_ID,
                    "oidc_subject": "demo-admin",
                    "email": "ada@example.com",
                    "name": "Ada Admin",
                    "role": "admin",
                    **created,
                },
                {
                    "id": MANAGER_ID,
                    "oidc_subject": "demo-manager",
                    "email": "maria@example.com",
                    "name": "Maria Rossi",
                    "role": "campaign_manager",
                    **created,
                },
                {
                    "id": VIEWER_ID,
                    "oidc_subject": "demo-viewer",
                    "email": "victor@example.com",
                    "name": "Victor Viewer",
                    "role": "viewer",
                    **created,
                },
            ],
        )
        started = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
        for campaign in DEMO_CAMPAIGNS:
            conn.execute(
                campaigns.insert().values(
                    id=campaign.id,
                    name=campaign.name,
                    status=campaign.status,
                    language=campaign.language,
                    created_by_user_id=MANAGER_ID,
                    updated_at=created["created_at"],
                    **created,
                )
            )
            contact_rows, response_rows = [], []
            for n in range(campaign.contacts):
                contact_id = uuid.UUID(int=rng.getrandbits(128), version=4)
                state = campaign.states[n % len(campaign.states)]
                attempted = started + timedelta(seconds=37 * n)
                contact_rows.append(
                    {
                        "id": contact_id,
                        "campaign_id": campaign.id,
                        "external_contact_id": f"CRM-{n:06d}" if n % 97 else None,
                        "phone_number": f"+39055{rng.randrange(10**7):07d}",
                        "email": f"contact{n}@example.com" if n % 3 else None,
                        "preferred_language": campaign.language,
                        "has_prior_consent": True,
                        "state": state,
                        "attempts_count": 0 if state == "pending" else 1 + n % 3,
                        "last_attempt_at": None if state == "pending" else attempted,
                        "last_outcome": state,
                        "updated_at": attempted,
                        **created,
                    }
                )
                if state == "completed":
                    response_rows.append(
                        {
                            "id": uuid.UUID(int=rng.getrandbits(128), version=4),
                            "contact_id": contact_id,
                            "campaign_id": campaign.id,
                            "q1_answer": rng.choice(ANSWERS),
                            "q2_answer": rng.choice(ANSWERS),
                            "q3_answer": rng.choice(ANSWERS),
                            "completed_at": attempted + timedelta(minutes=3, seconds=n % 60),
                        }
                    )
            if contact_rows:
                conn.execute(contacts.insert(), contact_rows)
            if response_rows:
                conn.execute(survey_responses.insert(), response_rows)
    return True
