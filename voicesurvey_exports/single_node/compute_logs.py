"""FileComputeLogManager: a run's stdout and stderr captured to files, as Dagster's
LocalComputeLogManager captures them, without also copying them to the worker's own.

LocalComputeLogManager mirrors each captured stream back to the process's stream with a
`tail -F` process, babysat by a new Python process in case the run dies: four processes
per run, about 0.1 CPU-seconds of a small export's 1 (the two Python starts). A run
worker forked by ForkingRunLauncher would only copy them to the daemon's terminal. The
UI reads the same files, so it shows the same logs. They are in the `storage` folder of
the instance's local artifact storage (Dagster's default folder, `$DAGSTER_HOME/storage`,
when `local_artifact_storage` is not configured, as in deploy/dagster-single-node.yaml)
unless `base_dir` is set. Dagster's own LocalComputeLogManager (deploy/dagster.yaml) is
right for its own launcher, whose run workers are children of the code server.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.instance.ref import compute_logs_directory
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file


class FileComputeLogManager(LocalComputeLogManager):
    """dagster.yaml (deploy/dagster-single-node.yaml):
    compute_logs:
      module: voicesurvey_exports.single_node.compute_logs
      class: FileComputeLogManager
    """

    def __init__(
        self,
        base_dir: str | None = None,
        polling_timeout: float | None = None,
        inst_data: ConfigurableClassData | None = None,
    ):
        # Without base_dir: the instance's storage folder, known once the instance
        # registers (None until then: a path made from it fails rather than point here).
        super().__init__(base_dir, polling_timeout, inst_data)  # type: ignore[arg-type]
        self._base_dir_of_instance = base_dir is None

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        from dagster import Field, StringSource

        return {
            **super().config_type(),
            "base_dir": Field(StringSource, is_required=False),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> FileComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        if self._base_dir_of_instance:
            self._base_dir = compute_logs_directory(instance.root_directory)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        ensure_file(outpath)
        ensure_file(errpath)
        with redirect_to_file(sys.stdout, outpath), redirect_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        # As LocalComputeLogManager: the file that says the capture is complete.
        touch_file(self.complete_artifact_path(log_key))
