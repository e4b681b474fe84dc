"""An export file's S3 object: its key, upload, signed download link, existence and deletion.

Every caller (the pipeline's ops and sensors, retention, the request API) goes through
ExportObjects, so the key layout, encryption and link format live here only. No pandas
or Dagster: the service loads this module too.
"""

from __future__ import annotations

import re
import threading
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from ..settings import Settings

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
GZIP_CONTENT_TYPE = "application/gzip"
# A job's compression option -> its object's (and download's) file name ending, for a CSV.
# The key says what the object holds, so anything holding only the key (a refresh of the
# link, retention) serves it right.
SUFFIXES = {"none": ".csv", "gzip": ".csv.gz"}
# A job's format -> its file name ending (".gz" after it for gzip) and what it holds.
FORMAT_SUFFIXES = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet", "xlsx": ".xlsx"}
GZIP_SUFFIX = ".gz"
CONTENT_TYPES = {
    ".csv": CSV_CONTENT_TYPE,
    ".jsonl": "application/x-ndjson",
    ".parquet": "application/vnd.apache.parquet",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
# Private objects, encrypted at rest with S3-managed keys unless a KMS key is configured.
SERVER_SIDE_ENCRYPTION = "AES256"
# An attempt's part of a key: a Dagster run id (a UUID) as it is spelt.
MAX_ATTEMPT_LENGTH = 36
_ATTEMPT_RULE = re.compile(rf"[a-z0-9-]{{1,{MAX_ATTEMPT_LENGTH}}}")
# S3's answers to HEAD on a key (or bucket) that does not exist.
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})

# Multipart in 8 MiB parts, four at a time (about 32 MiB of buffers), and a failed
# upload is aborted by boto3's transfer manager, so no partial object appears at the key.
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, max_concurrency=4
)


def s3_client(settings: Settings):
    """The boto3 S3 client the settings describe (region, optional S3-compatible endpoint)."""
    import boto3  # boto3's session set-up is slow: only callers that talk to S3 pay for it

    return boto3.client(
        "s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
    )


@dataclass(frozen=True)
class ExportObjects:
    """The export files in one bucket, under one key prefix (new files go to this bucket;
    a job's file is read, signed and deleted in the bucket its row records: in_bucket)."""

    client: Any
    bucket: str
    prefix: str
    url_ttl_seconds: int
    kms_key_id: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, client=None) -> ExportObjects:
        return cls(
            client=client if client is not None else s3_client(settings),
            bucket=settings.s3_bucket_name,
            prefix=settings.s3_export_prefix,
            url_ttl_seconds=settings.url_ttl_seconds,
            kms_key_id=settings.kms_key_id,
        )

    def in_bucket(self, bucket: str | None) -> ExportObjects:
        """The same objects in another bucket: the one a job's row records (None, on rows
        recorded before revision V0006, means this configured bucket)."""
        return self if bucket is None or bucket == self.bucket else replace(self, bucket=bucket)

    def key(
        self,
        campaign_id: uuid.UUID,
        export_job_id: uuid.UUID,
        compression: str = "none",
        attempt: str | None = None,
        file_format: str = "csv",
    ) -> str:
        """``{prefix}{campaign_id}/{export_job_id}/{attempt}.csv`` (``.csv.gz`` for gzip;
        ``.jsonl``, ``.jsonl.gz``, ``.parquet``, ``.xlsx`` for the other formats):
        each attempt at a job (a run: the first, a retry, a re-execution) writes its own
        object, so an attempt that lost the job can never overwrite the winner's file,
        nor a clean-up of the loser's delete it. Without ``attempt``, the layout of
        files written before that: ``{prefix}{campaign_id}/{export_job_id}.csv``."""
        if compression not in SUFFIXES:
            raise ValueError(f"compression {compression!r} is not one of {tuple(SUFFIXES)}")
        if file_format not in FORMAT_SUFFIXES:
            raise ValueError(f"format {file_format!r} is not one of {tuple(FORMAT_SUFFIXES)}")
        job = f"{campaign_id}/{export_job_id}"
        if attempt is not None:
            if not _ATTEMPT_RULE.fullmatch(attempt):
                raise ValueError(f"attempt {attempt!r} must be 1-{MAX_ATTEMPT_LENGTH} of a-z 0-9 -")
            job = f"{job}/{attempt}"
        suffix = FORMAT_SUFFIXES[file_format] + (GZIP_SUFFIX if compression == "gzip" else "")
        return f"{self.prefix}{job}{suffix}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def upload(
        self,
        path: Path,
        key: str,
        sha256: str | None = None,
        on_bytes: Callable[[int, int], None] | None = None,
    ) -> None:
        """Upload the file; its SHA-256 (hex) goes on the object as metadata `sha256`
        (x-amz-meta-sha256), so the object can be checked in S3 too.

        ``on_bytes(bytes_sent, total_bytes)`` is called from the transfer's threads as
        parts go out. Whatever it raises fails the upload: boto3's transfer manager
        aborts a multipart upload that fails, so no object appears at the key."""
        metadata = {"Metadata": {"sha256": sha256}} if sha256 else {}
        self.client.upload_file(
            str(path),
            self.bucket,
            key,
            ExtraArgs={"ContentType": content_type(key), **self._encryption(), **metadata},
            Config=TRANSFER_CONFIG,
            Callback=None if on_bytes is None else _BytesSent(path.stat().st_size, on_bytes),
        )

    def sign(self, key: str, campaign_name: str, export_date: date) -> tuple[str, datetime]:
        """A GET link valid for url_ttl_seconds that downloads as an attachment named
        after the campaign and the export's date, ending as the key does (.csv, .csv.gz,
        .jsonl, .jsonl.gz, .parquet, .xlsx)."""
        # RFC 6266: browsers take filename* (RFC 5987, UTF-8) and fall back to filename.
        suffix = suffix_of(key)
        fallback = download_filename(campaign_name, export_date, suffix)
        filename = unicode_download_filename(campaign_name, export_date, suffix)
        expires_at = datetime.now(UTC) + timedelta(seconds=self.url_ttl_seconds)
        url = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": (
                    f'attachment; filename="{fallback}"; '
                    f"filename*=UTF-8''{quote(filename, safe='')}"
                ),
                "ResponseContentType": content_type(key),
            },
            ExpiresIn=self.url_ttl_seconds,
        )
        return url, expires_at.replace(microsecond=0)

    def exists(self, key: str) -> bool:
        """Whether the object is there. A missing bucket raises BucketUnreachable (it is a
        misconfigured bucket or endpoint, not a deleted file); other S3 errors raise too."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error_code(error) not in MISSING_CODES:
                raise
            # S3 answers a HEAD on a missing bucket with a bare 404 too.
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as bucket_error:
                raise BucketUnreachable(self.bucket, bucket_error) from None
            return False
        return True

    def stored(self, key: str, first_bytes: int) -> tuple[int, bytes]:
        """The stored object's size and its first bytes, as a download gets them (one
        ranged GET)."""
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes=0-{first_bytes - 1}"
            )
        except ClientError as error:
            if error_code(error) == "InvalidRange":  # an empty object has no byte 0
                return 0, b""
            raise
        return int(response["ContentRange"].rsplit("/", 1)[1]), response["Body"].read()

    def delete(self, key: str) -> None:
        """Delete the object and abort any multipart upload a killed run left at its key
        (its parts hold contact data too, though no object shows them)."""
        self.client.delete_object(Bucket=self.bucket, Key=key)
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        except ClientError:
            # Without s3:ListBucketMultipartUploads the bucket's lifecycle rule aborts them.
            return
        for upload in listing.get("Uploads", []):
            if upload["Key"] == key:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                )

    def _encryption(self) -> dict:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": SERVER_SIDE_ENCRYPTION}


class _BytesSent:
    """boto3's upload Callback (bytes per call, from several threads) as a running total."""

    def __init__(self, total: int, on_bytes: Callable[[int, int], None]):
        self.total, self.on_bytes = total, on_bytes
        self.sent, self.lock = 0, threading.Lock()

    def __call__(self, bytes_transferred: int) -> None:
        with self.lock:
            # A retried request rewinds with a negative amount.
            self.sent += bytes_transferred
            sent = self.sent
        self.on_bytes(sent, self.total)


class BucketUnreachable(Exception):
    """The export bucket itself cannot be reached (missing, or no access to it)."""

    def __init__(self, bucket: str, error: ClientError):
        super().__init__(f"cannot reach bucket {bucket!r} in S3: {error}")
        self.error = error


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code"))


def describe_s3_error(error: BaseException) -> str:
    """The S3 service's own words, without boto3's wrapper (which names local temp files)."""
    cause = error.__cause__ or error.__context__
    if isinstance(error, S3UploadFailedError) and isinstance(cause, ClientError):
        error = cause
    return str(error)


def suffix_of(key: str) -> str:
    """The file name ending of an export object: its format's (.csv, .jsonl, .parquet,
    .xlsx), then .gz for a gzip export; .csv for a key that says nothing else."""
    for suffix in FORMAT_SUFFIXES.values():
        for ending in (suffix + GZIP_SUFFIX, suffix):
            if key.endswith(ending):
                return ending
    return SUFFIXES["none"]


def content_type(key: str) -> str:
    """What the object holds, as its key's ending says."""
    suffix = suffix_of(key)
    if suffix.endswith(GZIP_SUFFIX):
        return GZIP_CONTENT_TYPE
    return CONTENT_TYPES[suffix]


def download_filename(campaign_name: str, export_date: date, suffix: str = ".csv") -> str:
    """The ASCII fallback of the download's name: campaign name as a slug, and date."""
    return f"{_slug(campaign_name)}-{export_date.isoformat()}{suffix}"


# Not allowed in file names on Windows (and "/" nowhere); the rest is fine everywhere.
_UNSAFE_IN_FILENAMES = re.compile(r'[<>:"/\\|?*]')
# UTF-8 bytes of the name part: file systems allow 255 bytes in all, date and ".csv.gz" too.
_MAX_NAME_BYTES = 200


def unicode_download_filename(campaign_name: str, export_date: date, suffix: str = ".csv") -> str:
    """The download's name as people wrote the campaign's: "Große Qualität 2026-11-28.csv".

    Characters no file system takes, or that show nothing or reorder text (controls,
    format characters such as right-to-left overrides, line separators), become "-";
    runs of spaces become one; dots, spaces and dashes at the ends go (Windows drops
    trailing dots, a leading dot hides the file, a leading dash reads as an option).
    """
    name = unicodedata.normalize("NFC", campaign_name)
    name = "".join(
        "-" if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") else char
        for char in _UNSAFE_IN_FILENAMES.sub("-", name)
    )
    name = re.sub(r"\s+", " ", name).strip(" .-")
    encoded = name.encode("utf-8")[:_MAX_NAME_BYTES]
    name = encoded.decode("utf-8", errors="ignore").strip(" .-")
    return f"{name or _slug(campaign_name)} {export_date.isoformat()}{suffix}"


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_text).strip("-")
    return slug[:80] or "campaign-export"
