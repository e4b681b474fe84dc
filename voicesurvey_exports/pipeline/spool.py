"""Local spool files that carry an export between its ops, in private folders per run.

Files hold contact data, so they live only as long as the run: the last op removes the
run's folders, the resource's teardown removes them when the run ends in any other way
(a failed step included), and folders left by killed runs are swept after a day (or at
once by the run that retries them).
"""

import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg

STALE_AFTER_SECONDS = 24 * 3600
FOLDER_PREFIX = "voicesurvey-export-"


class SpoolStorage(dg.ConfigurableResource):
    """Where runs keep their spool folders (local disk of the run worker)."""

    base_dir: str

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Runs at the end of every run, success or failure (a failure hook on each op
        # did the same, at the price of a HOOK_SKIPPED event per op and run).
        if context.run is not None:
            self.remove(context.run.run_id)

    def new_run_dir(self, run_id: str) -> Path:
        """A fresh folder only this user can enter: mkdtemp never reuses a folder that
        exists already (someone else's, or one with a looser mode)."""
        self.sweep_stale()
        return Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{run_id}-", dir=self.base_dir))

    def remove(self, run_id: str) -> None:
        for folder in Path(self.base_dir).glob(f"{FOLDER_PREFIX}{run_id}-*"):
            _remove_folder(folder)

    def sweep_stale(self) -> None:
        cutoff = time.time() - STALE_AFTER_SECONDS
        for folder in Path(self.base_dir).glob(f"{FOLDER_PREFIX}*"):
            try:
                if folder.lstat().st_mtime < cutoff:
                    _remove_folder(folder)
            except FileNotFoundError:
                continue


def _remove_folder(folder: Path) -> None:
    # Never follow a symlink planted under the spool's name.
    if folder.is_symlink():
        folder.unlink(missing_ok=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
