"""EXPORT_WEBHOOK_URL and EXPORT_WEBHOOK_SECRET: both optional; a URL needs one or more
secrets (whsec_ Standard Webhooks secrets, or raw ones of 16+ characters); errors are one
line naming the value (less anything that may carry a credential) and the rule, and
never show the secret."""

import base64

import pytest

from voicesurvey_exports.settings import VARIABLES, Settings, SettingsError, webhook_signing_keys

BASE = {"DATABASE_URL": "sqlite:///app.db"}
SECRET = "s3cr3t-webhook-key-0123"


def settings(**overrides) -> Settings:
    return Settings.from_env({**BASE, **overrides})


def test_webhook_is_off_when_no_url_is_set():
    assert (settings().webhook_url, settings().webhook_secret) == (None, None)
    # An empty value is unset, and a secret alone (stored ahead of the URL) switches nothing on.
    off = settings(EXPORT_WEBHOOK_URL="", EXPORT_WEBHOOK_SECRET=SECRET)
    assert (off.webhook_url, off.webhook_secret) == (None, None)


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com/hooks/exports",
        "http://127.0.0.1:8080/hook?token=abc",
        "https://hooks.example.com",
    ],
)
def test_http_and_https_urls_with_a_secret_are_accepted(url):
    s = settings(EXPORT_WEBHOOK_URL=url, EXPORT_WEBHOOK_SECRET=SECRET)
    assert (s.webhook_url, s.webhook_secret) == (url, SECRET)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://hooks.example.com/x", "ftp://hooks.example.com/x"),
        ("hooks.example.com/x", "hooks.example.com/x"),
        ("https:///no-host", "https:///no-host"),
        ("https://hooks.example.com:99999/x", "https://hooks.example.com:99999/x"),
        ("https://hooks.example.com/x y", "https://hooks.example.com/x y"),
        ("https://hooks.example.com/x\n", "https://hooks.example.com/x\n"),
        ("mailto:ops@example.com?token=abc", "mailto:ops@example.com?..."),
        ("ftp://user:pw@hooks.example.com/x?token=abc", "ftp://***@hooks.example.com/x?..."),
        ("https://user:pw@hooks.example.com/x", "https://***@hooks.example.com/x"),
        ("https://hooks.example.com/hooké", "https://hooks.example.com/hooké"),
    ],
)
def test_bad_webhook_url_is_one_line_naming_value_and_rule(url, shown):
    with pytest.raises(SettingsError) as error:
        settings(EXPORT_WEBHOOK_URL=url, EXPORT_WEBHOOK_SECRET=SECRET)
    assert str(error.value) == (
        f"EXPORT_WEBHOOK_URL={shown!r} must be an http:// or https:// URL with a host and "
        "no user info, in ASCII on one line without spaces"
    )
    assert "abc" not in str(error.value) and "pw" not in str(error.value)


def test_url_without_secret_is_refused():
    with pytest.raises(SettingsError) as error:
        settings(EXPORT_WEBHOOK_URL="https://app.example.com/hooks")
    assert str(error.value) == (
        "EXPORT_WEBHOOK_SECRET is not set: EXPORT_WEBHOOK_URL needs it to sign each "
        "notification (a whsec_ secret, or at least 16 characters)"
    )


@pytest.mark.parametrize("secret", ["x", "fifteen-chars-1"])
def test_short_secret_is_refused_without_showing_it(secret):
    with pytest.raises(SettingsError) as error:
        settings(EXPORT_WEBHOOK_URL="https://app.example.com/hooks", EXPORT_WEBHOOK_SECRET=secret)
    message = str(error.value)
    assert message == (
        f"EXPORT_WEBHOOK_SECRET (value not shown, {len(secret)} characters) must be a whsec_ "
        "secret or at least 16 characters"
    )
    assert secret not in message.replace("EXPORT_WEBHOOK_SECRET", "")


@pytest.mark.parametrize("secret", [SECRET + "\n", " " + SECRET])
def test_secret_with_surrounding_whitespace_is_refused(secret):
    # A secret file's trailing newline would sign with a key the app does not have.
    with pytest.raises(SettingsError) as error:
        settings(EXPORT_WEBHOOK_URL="https://app.example.com/hooks", EXPORT_WEBHOOK_SECRET=secret)
    assert str(error.value) == (
        "EXPORT_WEBHOOK_SECRET (value not shown) must not start or end with whitespace"
    )


def test_secret_never_shows_in_the_settings_repr():
    s = settings(EXPORT_WEBHOOK_URL="https://app.example.com/h", EXPORT_WEBHOOK_SECRET=SECRET)
    assert SECRET not in repr(s) and SECRET not in str(s)


def test_deploy_configs_pass_both_variables_on():
    assert {"EXPORT_WEBHOOK_URL", "EXPORT_WEBHOOK_SECRET"} <= set(VARIABLES)


WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
URL = "https://app.example.com/hooks"


def test_standard_webhooks_secrets_and_a_rotation_are_accepted():
    assert webhook_signing_keys(WHSEC) == [b"k" * 32]
    unpadded = "whsec_" + base64.b64encode(b"q" * 25).decode().rstrip("=")
    both = settings(EXPORT_WEBHOOK_URL=URL, EXPORT_WEBHOOK_SECRET=f"{unpadded} {SECRET}")
    assert webhook_signing_keys(both.webhook_secret) == [b"q" * 25, SECRET.encode()]


@pytest.mark.parametrize(
    ("secret", "rule"),
    [
        ("whsec_not*base64*at*all*0123456789", "must be whsec_ followed by the base64 of 24-64"),
        ("whsec_" + base64.b64encode(b"k" * 23).decode(), "base64 of 24-64 random bytes"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "base64 of 24-64 random bytes"),
        (f"{WHSEC}  {SECRET}", "must be 1-5 secrets separated by single spaces"),
        (" ".join([WHSEC] * 6), "must be 1-5 secrets separated by single spaces"),
        (f"{WHSEC}\t{SECRET}", "must separate its secrets with single spaces"),
        (f"{WHSEC}\n{SECRET}", "must separate its secrets with single spaces"),
    ],
)
def test_malformed_secrets_are_refused_in_one_line_without_the_value(secret, rule):
    with pytest.raises(SettingsError) as refused:
        settings(EXPORT_WEBHOOK_URL=URL, EXPORT_WEBHOOK_SECRET=secret)
    message = str(refused.value)
    assert rule in message and "\n" not in message
    for part in secret.split():
        assert part.removeprefix("whsec_") not in message


def test_a_short_raw_secret_in_a_rotation_is_named_by_its_position():
    with pytest.raises(SettingsError) as refused:
        settings(EXPORT_WEBHOOK_URL=URL, EXPORT_WEBHOOK_SECRET=f"{WHSEC} short-one")
    assert str(refused.value) == (
        "EXPORT_WEBHOOK_SECRET (value not shown, secret 2 of 2, 9 characters) must be a "
        "whsec_ secret or at least 16 characters"
    )
