"""S3 clients made ahead of a run, which its resources use instead of making their own.

Empty unless something fills it: the opt-in single-node fast path
(voicesurvey_exports/single_node/s3_client.py) makes one in the run workers' forkserver,
so that each forked worker skips botocore's model parsing. Plain Dagster, and any other
configuration than the one made, make their client as usual. Imports nothing of this
project, so the forkserver that imports it holds none of the project's code.
"""

from __future__ import annotations

from dagster_aws.s3 import S3Resource

# (type, configuration) of the resource -> its client.
_made: dict[tuple, object] = {}


def _key(resource: S3Resource) -> tuple:
    return type(resource), tuple(sorted(resource.model_dump().items()))


def register(resource: S3Resource, client) -> None:
    """Have resources equal to `resource` use `client` in this process (and its forks)."""
    _made[_key(resource)] = client


def get_client(resource: S3Resource):
    """resource.get_client(), or the client registered for an equal resource (a subclass,
    as tests use to inject faults, always gets its own)."""
    made = _made.get(_key(resource))
    return made if made is not None else resource.get_client()
