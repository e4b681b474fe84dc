"""S3: object keys, upload and presigned download links for export files."""

from __future__ import annotations

import io
import re
import unicodedata
import uuid
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote

from .exports.csv_format import CSV_CONTENT_TYPE

# Private objects, encrypted at rest with S3-managed keys.
SERVER_SIDE_ENCRYPTION = "AES256"


def object_key(prefix: str, campaign_id: uuid.UUID, export_job_id: uuid.UUID) -> str:
    return f"{prefix}{campaign_id}/{export_job_id}.csv"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def upload_csv_bytes(s3_client, bucket: str, key: str, body: bytes) -> None:
    """Upload through boto3's managed transfer (multipart for large files, aborted on error)."""
    s3_client.upload_fileobj(
        io.BytesIO(body),
        bucket,
        key,
        ExtraArgs={"ContentType": CSV_CONTENT_TYPE, "ServerSideEncryption": SERVER_SIDE_ENCRYPTION},
    )


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
