"""A small, deterministic sample campaign for trying the pipeline locally.

Inserted only into an empty database, so re-running never duplicates it.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select

from .app_db.schema import CONTACT_STATES, campaigns, contacts, survey_responses, users

# Fixed ids so that the printed commands stay valid from one start to the next.
MANAGER_ID = uuid.UUID("00000000-0000-4000-8000-00000000a001")
VIEWER_ID = uuid.UUID("00000000-0000-4000-8000-00000000a003")
CAMPAIGN_ID = uuid.UUID("00000000-0000-4000-8000-00000000c001")

ANSWERS = [
    "Sì, molto soddisfatto",
    'Servizio "eccellente", grazie',
    "Größtenteils zufrieden 👍",
    "Nein, leider nicht",
    '=HYPERLINK("http://example.com")',
    "Prima riga\nseconda riga",
    "+39 mi richiami",
    None,
]


def seed_sample_data(engine: Engine, contacts_count: int = 200) -> bool:
    """Insert the sample users, campaign and contacts; return False if data already exists."""
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(campaigns)).scalar_one():
            return False
        rng = random.Random(18)
        conn.execute(
            users.insert(),
            [
                {
                    "id": MANAGER_ID,
                    "oidc_subject": "sample-manager",
                    "email": "manager@example.com",
                    "name": "Maria Manager",
                    "role": "campaign_manager",
                },
                {
                    "id": uuid.UUID("00000000-0000-4000-8000-00000000a002"),
                    "oidc_subject": "sample-admin",
                    "email": "admin@example.com",
                    "name": "Ada Admin",
                    "role": "admin",
                },
                {
                    "id": VIEWER_ID,
                    "oidc_subject": "sample-viewer",
                    "email": "viewer@example.com",
                    "name": "Victor Viewer",
                    "role": "viewer",
                },
            ],
        )
        conn.execute(
            campaigns.insert().values(
                id=CAMPAIGN_ID,
                name="Customer satisfaction — autumn",
                status="completed",
                language="it",
                created_by_user_id=MANAGER_ID,
            )
        )
        started = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
        contact_rows, response_rows = [], []
        for n in range(contacts_count):
            contact_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            state = CONTACT_STATES[n % len(CONTACT_STATES)]
            attempted = started + timedelta(minutes=13 * n)
            contact_rows.append(
                {
                    "id": contact_id,
                    "campaign_id": CAMPAIGN_ID,
                    "external_contact_id": f"CRM-{n:05d}",
                    "phone_number": f"+39055{rng.randrange(10**7):07d}",
                    "state": state,
                    "attempts_count": 0 if state == "pending" else 1 + n % 3,
                    "last_attempt_at": None if state == "pending" else attempted,
                }
            )
            if state == "completed":
                response_rows.append(
                    {
                        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
                        "contact_id": contact_id,
                        "campaign_id": CAMPAIGN_ID,
                        "q1_answer": rng.choice(ANSWERS),
                        "q2_answer": rng.choice(ANSWERS),
                        "q3_answer": rng.choice(ANSWERS),
                        "completed_at": attempted + timedelta(minutes=4),
                    }
                )
        conn.execute(contacts.insert(), contact_rows)
        conn.execute(survey_responses.insert(), response_rows)
    return True
