"""Imported last by the run-worker forkserver (run_launcher.py), after the preloaded
libraries: moves every object they created out of the garbage collector's view.

A run worker is a fork of the forkserver and shares its memory copy-on-write. Without
this, the worker's first full collection walks (and so writes to, and copies) every page
of the preloaded heap, and each later one walks it again, for objects that live as long
as the process anyway.
"""

import gc

gc.freeze()
