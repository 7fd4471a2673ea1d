"""Which fields are sensitive, and how values are redacted."""

from __future__ import annotations

from conveyor.telemetry import DEFAULT_REDACT, REDACTED, Redactor


def test_exact_and_suffix_matches_are_sensitive_case_insensitively() -> None:
    r = Redactor(["password", "token"])
    assert r.sensitive("password") and r.sensitive("PASSWORD") and r.sensitive("db_password")
    assert r.sensitive("X-Auth-Token") and r.sensitive("access_token")
    assert not r.sensitive("tokens") and not r.sensitive("password_hint_shown")
    assert not r.sensitive("user")


def test_nested_dicts_and_lists_are_redacted_without_mutating_input() -> None:
    r = Redactor(["password"])
    data = {"user": "ann", "args": [1, {"password": "p"}], "kwargs": {"db": {"password": "q"}}}
    out = r.mapping(data)
    assert out == {"user": "ann", "args": [1, {"password": REDACTED}],
                   "kwargs": {"db": {"password": REDACTED}}}
    assert data["args"] == [1, {"password": "p"}]


def test_clean_data_is_returned_as_is() -> None:
    r = Redactor()
    data = {"user": "ann", "items": [1, 2, {"n": 3}]}
    assert r.mapping(data) is data


def test_empty_list_disables_redaction_and_defaults_cover_common_secrets() -> None:
    assert Redactor([]).mapping({"password": "p"}) == {"password": "p"}
    assert not Redactor([])
    for name in ("password", "token", "api_key", "secret", "authorization"):
        assert name in DEFAULT_REDACT
    assert Redactor().merged(["ssn_last4"]).sensitive("ssn_last4")
