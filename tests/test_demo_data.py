from sqlalchemy import func, select

from dev.demo_data import seed_demo_data
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.app_db.schema import (
    CONTACT_STATES,
    USER_ROLES,
    campaigns,
    contacts,
    survey_responses,
    users,
)


def seeded(path) -> object:
    engine = get_engine(f"sqlite:///{path}")
    upgrade(engine)
    assert seed_demo_data(engine)
    return engine


def snapshot(engine) -> list:
    with engine.connect() as conn:
        return [
            conn.execute(select(table).order_by(table.c.id)).all()
            for table in (users, campaigns, contacts, survey_responses)
        ]


def test_demo_data_is_the_same_every_time_and_never_seeded_twice(tmp_path):
    first, second = seeded(tmp_path / "a.db"), seeded(tmp_path / "b.db")
    assert snapshot(first) == snapshot(second)
    assert not seed_demo_data(first)
    assert snapshot(first) == snapshot(second)


def test_demo_data_covers_every_role_state_and_awkward_answer(tmp_path):
    engine = seeded(tmp_path / "demo.db")
    with engine.connect() as conn:
        roles = set(conn.execute(select(users.c.role)).scalars())
        states = set(conn.execute(select(contacts.c.state)).scalars())
        sizes = dict(
            conn.execute(
                select(campaigns.c.name, func.count(contacts.c.id))
                .select_from(campaigns.outerjoin(contacts))
                .group_by(campaigns.c.name)
            ).all()
        )
        answers = [
            answer
            for row in conn.execute(
                select(survey_responses.c.q1_answer, survey_responses.c.q2_answer)
            )
            for answer in row
            if answer
        ]
    assert roles == set(USER_ROLES) and states == set(CONTACT_STATES)
    assert max(sizes.values()) == 20_000 and 0 in sizes.values()
    for needle in ("è", "ö", "👍", ",", '"', "\n"):
        assert any(needle in answer for answer in answers), needle
    assert any(answer.startswith("=") for answer in answers)
