"""Local spool files that carry an export between its ops, one private folder per run.

Files hold contact data, so they live only as long as the run: the last op and the
failure hook remove the folder, and folders left by killed runs are swept after a day.
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

    base_dir: str = tempfile.gettempdir()

    def run_dir(self, run_id: str) -> Path:
        self.sweep_stale()
        folder = Path(self.base_dir) / f"{FOLDER_PREFIX}{run_id}"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder

    def remove(self, run_id: str) -> None:
        shutil.rmtree(Path(self.base_dir) / f"{FOLDER_PREFIX}{run_id}", ignore_errors=True)

    def sweep_stale(self) -> None:
        cutoff = time.time() - STALE_AFTER_SECONDS
        for folder in Path(self.base_dir).glob(f"{FOLDER_PREFIX}*"):
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                continue


@dg.failure_hook(required_resource_keys={"spool"})
def remove_spool_on_failure(context: dg.HookContext) -> None:
    context.resources.spool.remove(context.run_id)
