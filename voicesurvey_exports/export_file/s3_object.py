"""S3: object keys, upload and presigned download links for export files."""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from .csv_format import CSV_CONTENT_TYPE

# Private objects, encrypted at rest with S3-managed keys.
SERVER_SIDE_ENCRYPTION = "AES256"


def object_key(prefix: str, campaign_id: uuid.UUID, export_job_id: uuid.UUID) -> str:
    return f"{prefix}{campaign_id}/{export_job_id}.csv"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


# Multipart in 8 MiB parts, four at a time (about 32 MiB of buffers), and a failed
# upload is aborted by boto3's transfer manager, so no partial object appears at the key.
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, max_concurrency=4
)


def encryption_args(kms_key_id: str | None) -> dict:
    """SSE-S3 (AES256) by default; SSE-KMS with the given key when one is configured."""
    if kms_key_id:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    return {"ServerSideEncryption": SERVER_SIDE_ENCRYPTION}


def upload_csv_file(
    s3_client, path: Path, bucket: str, key: str, kms_key_id: str | None = None
) -> None:
    s3_client.upload_file(
        str(path),
        bucket,
        key,
        ExtraArgs={"ContentType": CSV_CONTENT_TYPE, **encryption_args(kms_key_id)},
        Config=TRANSFER_CONFIG,
    )


def delete_export_object(s3_client, bucket: str, key: str) -> None:
    """Delete the object and abort any multipart upload a killed run left at its key
    (its parts hold contact data too, though no object shows them)."""
    s3_client.delete_object(Bucket=bucket, Key=key)
    try:
        uploads = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    except ClientError:
        # Without s3:ListBucketMultipartUploads the bucket's lifecycle rule aborts them.
        return
    for upload in uploads:
        if upload["Key"] == key:
            s3_client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])


def describe_s3_error(error: BaseException) -> str:
    """The S3 service's own words, without boto3's wrapper (which names local temp files)."""
    cause = error.__cause__ or error.__context__
    if isinstance(error, S3UploadFailedError) and isinstance(cause, ClientError):
        error = cause
    return str(error)


def download_filename(campaign_name: str, export_date: date) -> str:
    """A name a person recognises in their downloads folder: campaign name and date."""
    return f"{_slug(campaign_name)}-{export_date.isoformat()}.csv"


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_text).strip("-")
    return slug[:80] or "campaign-export"


def presigned_download_url(
    s3_client, bucket: str, key: str, ttl_seconds: int, filename: str
) -> tuple[str, datetime]:
    """A GET link valid for ttl_seconds that downloads as an attachment named filename."""
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    url = s3_client.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": bucket,
            "Key": key,
            "ResponseContentDisposition": (
                f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quote(filename)}"
            ),
            "ResponseContentType": CSV_CONTENT_TYPE,
        },
        ExpiresIn=ttl_seconds,
    )
    return url, expires_at.replace(microsecond=0)
