"""Imported last by the run-worker forkserver (run_launcher.py), after the preloaded
libraries: makes the workers' S3 client (s3_client.py), then moves every object the
forkserver holds out of the garbage collector's view.

A run worker is a fork of the forkserver and shares its memory copy-on-write. Without
the freeze, the worker's first full collection walks (and so writes to, and copies)
every page of the preloaded heap, and each later one walks it again, for objects that
live as long as the process anyway.
"""

import gc

from voicesurvey_exports.single_node import s3_client

s3_client.make_for_environment()
gc.freeze()
