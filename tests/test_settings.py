import uuid

import pytest

from voicesurvey_exports.app_db.schema import export_jobs
from voicesurvey_exports.export_file.s3_object import ExportObjects
from voicesurvey_exports.settings import MAX_PREFIX_LENGTH, Settings, SettingsError

BASE = {"DATABASE_URL": "sqlite:///app.db"}


def settings(**overrides) -> Settings:
    return Settings.from_env({**BASE, **overrides})


def test_seed_defaults_apply_when_unset():
    s = settings()
    assert (s.s3_bucket_name, s.s3_export_prefix, s.url_ttl_seconds, s.aws_region) == (
        "voicesurvey-exports",
        "exports/",
        3600,
        "eu-central-1",
    )
    assert s.aws_endpoint_url is None


def test_missing_database_url_is_reported():
    with pytest.raises(SettingsError, match="DATABASE_URL is not set"):
        Settings.from_env({})


@pytest.mark.parametrize("value", ["0", "-5", "abc", "604801", "1.5", ""])
def test_url_expiration_outside_s3_limits_is_rejected_naming_value_and_rule(value):
    with pytest.raises(SettingsError) as error:
        settings(EXPORT_URL_EXPIRATION_SECONDS=value)
    message = str(error.value)
    assert f"EXPORT_URL_EXPIRATION_SECONDS={value!r}" in message
    assert "604800" in message and "\n" not in message


def test_url_expiration_at_seven_days_is_accepted():
    assert settings(EXPORT_URL_EXPIRATION_SECONDS="604800").url_ttl_seconds == 604800


@pytest.mark.parametrize("value", ["", "Upper_Case", "a", "x" * 64, "-starts-with-dash"])
def test_invalid_bucket_names_are_rejected(value):
    with pytest.raises(SettingsError, match=f"S3_BUCKET_NAME={value!r}"):
        settings(S3_BUCKET_NAME=value)


@pytest.mark.parametrize("value", ["", "p" * (MAX_PREFIX_LENGTH + 1), "/exports/"])
def test_empty_oversized_or_absolute_prefix_is_rejected(value):
    with pytest.raises(SettingsError, match="S3_EXPORT_PREFIX="):
        settings(S3_EXPORT_PREFIX=value)


def test_the_longest_prefix_still_fits_a_gzip_exports_key_in_the_job_row():
    prefix = settings(S3_EXPORT_PREFIX="p" * MAX_PREFIX_LENGTH).s3_export_prefix
    run_id = str(uuid.uuid4())  # each run writes its own object (a Dagster run id)
    key = ExportObjects(None, "b", prefix, 60).key(uuid.uuid4(), uuid.uuid4(), "gzip", run_id)
    assert key.endswith(".csv.gz")
    assert len(key) == export_jobs.c.s3_key.type.length == 500


@pytest.mark.parametrize(
    "value", ["١٢٣", "１２３", "1_000", "+60", "0x10", "1e3", "12 34", "9" * 5000, "-0"]
)
def test_integer_settings_take_ascii_digits_only(value):
    # int() accepts the first three; an operator would not read them as the same number.
    with pytest.raises(SettingsError) as error:
        settings(EXPORT_RETENTION_DAYS=value)
    message = str(error.value)
    assert message.startswith(f"EXPORT_RETENTION_DAYS={value!r} must be a whole number")
    assert "digits 0-9" in message and "3650" in message and "\n" not in message


@pytest.mark.parametrize(("value", "days"), [("45", 45), (" 45\n", 45), ("0007", 7)])
def test_integer_settings_allow_surrounding_whitespace_and_leading_zeros(value, days):
    assert settings(EXPORT_RETENTION_DAYS=value).retention_days == days


@pytest.mark.parametrize("value", ["voicesurvey-exports\n", "voicesurvey-exports ", "\nabc"])
def test_bucket_name_with_a_trailing_newline_or_space_is_rejected(value):
    with pytest.raises(SettingsError, match="S3_BUCKET_NAME="):
        settings(S3_BUCKET_NAME=value)


def test_access_policy_defaults_to_role_and_accepts_owner():
    assert settings().export_access_policy == "role"
    assert settings(EXPORT_ACCESS_POLICY="owner").export_access_policy == "owner"


@pytest.mark.parametrize("value", ["", "owners", "OWNER", "admin"])
def test_unknown_access_policy_is_one_line_naming_value_and_choices(value):
    with pytest.raises(SettingsError) as error:
        settings(EXPORT_ACCESS_POLICY=value)
    assert str(error.value) == f"EXPORT_ACCESS_POLICY={value!r} must be one of: role, owner"


def test_http_body_limit_defaults_to_64_kib_and_refuses_values_out_of_range():
    assert settings().http_max_body_bytes == 65536
    assert settings(EXPORT_HTTP_MAX_BODY_BYTES="1024").http_max_body_bytes == 1024
    for value in ("0", "1023", "16777217", "64k", "", "-1"):
        with pytest.raises(SettingsError) as error:
            settings(EXPORT_HTTP_MAX_BODY_BYTES=value)
        assert str(error.value) == (
            f"EXPORT_HTTP_MAX_BODY_BYTES={value!r} must be a whole number (digits 0-9) of at "
            "least 1024 and at most 16777216 (the service holds a body whole in memory)"
        )


@pytest.mark.parametrize("value", ["5", "30", "-1", "4.5"])
def test_sensor_wait_of_the_daemons_loop_or_longer_is_refused_naming_the_limit(value):
    # A tick still running when dagster-daemon's 5 s loop comes round is skipped: a
    # 5 s wait would look for new requests half the time, not nearly all of it.
    with pytest.raises(SettingsError) as error:
        settings(EXPORT_SENSOR_WAIT_SECONDS=value)
    message = str(error.value)
    assert message.startswith(f"EXPORT_SENSOR_WAIT_SECONDS={value!r} must be a whole number")
    assert "at most 4" in message and "5 s sensor loop" in message


def test_sensor_wait_defaults_to_4_seconds_of_plain_dagster_daemons_5_second_loop():
    assert settings().sensor_wait_seconds == 4
    assert settings(EXPORT_SENSOR_WAIT_SECONDS="0").sensor_wait_seconds == 0
