"""The run workers' S3 client, made once by the run-worker forkserver (run_launcher.py).

Making a boto3 client parses botocore's JSON service models: about 0.1 CPU-seconds, a
tenth of a small export's CPU, paid by every run worker. The forkserver makes the client
of its environment's S3 configuration through dagster-aws before it forks any worker and
registers it (pipeline/premade_clients.py); a worker whose S3Resource has the same
configuration uses that client instead of making one. Only when the credentials come
from the environment variables (AWS_ACCESS_KEY_ID...), as botocore's public
`Session.get_credentials()` says: the workers' environment is the forkserver's, so they
would find the same, and finding them sends no request, so the workers share no
connection. Credentials found elsewhere (a credentials file that may be rotated, an
instance role fetched over HTTP, none yet) are looked up by each worker, as before.

The forkserver imports this module (not settings.py, which would then be frozen in
every worker until the daemon restarts), so it reads the two variables itself;
tests/test_run_launcher.py checks that it reads them as Settings does. Being imported by
the forkserver, this module itself is new in the workers only after a daemon restart.
"""

from __future__ import annotations

import logging
import os

import boto3
from dagster_aws.s3 import S3Resource

from voicesurvey_exports.pipeline import premade_clients

# Settings' default region (settings.DEFAULTS).
DEFAULT_REGION = "eu-central-1"


def credentials_from_environment() -> bool:
    """Whether boto3's default chain finds its credentials in the environment variables."""
    credentials = boto3.session.Session().get_credentials()
    return credentials is not None and credentials.method == "env"


def make_for_environment() -> None:
    """In the forkserver: make and register the client of this environment's
    configuration. A failure is left to the workers, which make their own and report it
    on their runs."""
    if not credentials_from_environment():
        return
    region = os.environ.get("AWS_REGION") or DEFAULT_REGION
    resource = S3Resource(
        region_name=region, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None
    )
    try:
        client = resource.get_client()
    except Exception:  # the forkserver must start whatever the S3 configuration
        logging.getLogger(__name__).exception("no S3 client made ahead of the run workers")
        return
    premade_clients.register(resource, client)
