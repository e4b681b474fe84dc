"""Spool folders hold contact data: each is created fresh and private, never reused."""

from __future__ import annotations

import stat

from voicesurvey_exports.pipeline.spool import FOLDER_PREFIX, SpoolStorage


def test_a_folder_planted_under_the_runs_name_is_not_used(tmp_path):
    planted = tmp_path / f"{FOLDER_PREFIX}run-1"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)  # readable by everyone, as an attacker would leave it

    folder = SpoolStorage(base_dir=str(tmp_path)).new_run_dir("run-1")

    assert folder != planted and folder.parent == tmp_path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert list(folder.iterdir()) == []


def test_removing_a_run_never_follows_a_symlink_out_of_the_spool(tmp_path):
    spool_dir, outside = tmp_path / "spool", tmp_path / "precious"
    spool_dir.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    spool = SpoolStorage(base_dir=str(spool_dir))
    own = spool.new_run_dir("run-2")
    (own / "contacts.spool.csv").write_text("contact data")
    (spool_dir / f"{FOLDER_PREFIX}run-2-link").symlink_to(outside)

    spool.remove("run-2")

    assert list(spool_dir.iterdir()) == []
    assert (outside / "keep.txt").read_text() == "keep"
