"""The output checkpoint: personal data and secrets redacted, everything else untouched."""

from __future__ import annotations

import pytest

from agent.config import GuardSettings
from agent.guard_redact import luhn_valid
from agent.guards import Guards, redact_secrets

CLEAN_ANSWERS = [
    "17*23=391",
    "The answer is 4.",
    "In 2024 revenue grew 12% to $1,299,000.50 (see table 3).",
    "Released 2024-01-15 10:30 UTC; meeting on 03.04.2024 12:00.",
    "Python 3.11.4, build 10.0.22621.2428, IP 192.168.1.1, port 8080.",
    "ISBN 978-3-16-148410-0 and order #12345678 shipped.",
    "Timestamp 1700000000000 ms; ids 1234567890123456 and 1234 5678 9012 3456.",
    "x = [0, 12, 34]; y = 1e-9; z = 0.5 * 0.25",
    "Scores: 1 2 3 4 5 6 7 8 9 10",
    "Extension 555-0143 is internal.",
    "api_key = os.environ['API_KEY']  # read it from the environment",
    "max_tokens: 1000, password: hunter2",
    "A risk-free, well-diversified-portfolio-strategy-for-everyone sk-learn tip.",
    "Email me? No, use the form at example.com/contact.",
]


@pytest.mark.parametrize("text", CLEAN_ANSWERS)
def test_clean_output_is_allowed_untouched(guards: Guards, text: str) -> None:
    verdict = guards.check_output(text)
    assert (verdict.checkpoint, verdict.action) == ("output", "allow"), verdict.text
    assert verdict.text == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to jane.doe+work@mail.example.co.uk today", "Write to [redacted email] today"),
        ("Call +44 20 7946 0958.", "Call [redacted phone]."),
        ("Call +1 (202) 555-0143 or (202) 555-0144", "Call [redacted phone] or [redacted phone]"),
        ("US: 202-555-0143, 1-800-555-0199, 202.555.0143",
         "US: [redacted phone], [redacted phone], [redacted phone]"),
        ("EU: 020 7946 0958 / 06 12 34 56 78 / +49 30 1234567 / +4930123456",
         "EU: [redacted phone] / [redacted phone] / [redacted phone] / [redacted phone]"),
        ("Card 4111 1111 1111 1111 exp 12/25", "Card [redacted card number] exp 12/25"),
        ("4111-1111-1111-1111 and 5555555555554444 and 3782 822463 10005",
         "[redacted card number] and [redacted card number] and [redacted card number]"),
    ],
)
def test_personal_data_is_redacted(guards: Guards, text: str, expected: str) -> None:
    verdict = guards.check_output(text)
    assert verdict.action == "redact"
    assert verdict.text == expected


def test_luhn_decides_what_counts_as_a_card(guards: Guards) -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert guards.check_output("pay with 4111 1111 1111 1111").text == "pay with [redacted card number]"
    assert guards.check_output("pay with 4111 1111 1111 1112").action == "allow"


@pytest.mark.parametrize(
    ("secret", "label"),
    [
        ("sk-proj-Abc123def456GHI789jkl012MNO345pqr", "OpenAI-style key"),
        ("ghp_" + "a1B2c3D4e5" * 4, "GitHub token"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "GitHub token"),
        ("AKIAIOSFODNN7EXAMPLE", "AWS access key id"),
        ("xoxb-1234567890-abcdefghijkl", "Slack token"),
        ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "Google API key"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "JWT"),
    ],
)
def test_secret_shapes_are_redacted(guards: Guards, secret: str, label: str) -> None:
    text, found = redact_secrets(f"key: {secret} end")
    assert secret not in text and "[redacted secret]" in text and text.endswith(" end")
    assert label in found
    verdict = guards.check_output(f"Use {secret} here")
    assert (verdict.action, verdict.text) == ("redact", "Use [redacted secret] here")


def test_private_key_blocks_are_redacted_whole() -> None:
    block = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
    text, found = redact_secrets(f"before\n{block}\nafter")
    assert (text, found) == ("before\n[redacted secret]\nafter", ["private key"])
    truncated, _ = redact_secrets("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B")
    assert truncated == "[redacted secret]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("api_key=abc123def456ghi789jkl", "api_key=[redacted secret]"),
        ('{"api_key": "abcd1234efgh5678ijkl"}', '{"api_key": "[redacted secret]"}'),
        ("token: 3a7bd3e2360a3d29eea4", "token: [redacted secret]"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_SECRET_ACCESS_KEY=[redacted secret]"),
        ("Authorization: Bearer abcdefghijklmnop1234567890", "Authorization: Bearer [redacted secret]"),
        ("password=s3cretPassw0rd", "password=[redacted secret]"),
    ],
)
def test_credential_assignments_keep_the_name_and_lose_the_value(text: str, expected: str) -> None:
    redacted, found = redact_secrets(text)
    assert redacted == expected
    assert found == ["credential assignment"]


def test_reason_counts_each_kind(guards: Guards) -> None:
    text = "Mail a@example.com, b@example.org; card 4111 1111 1111 1111; call +44 20 7946 0958; AKIAIOSFODNN7EXAMPLE"
    verdict = guards.check_output(text)
    assert verdict.reason == "redacted 2 emails, 1 phone number, 1 card number, 1 secret"
    assert verdict.text == (
        "Mail [redacted email], [redacted email]; card [redacted card number]; call [redacted phone]; "
        "[redacted secret]"
    )


def test_only_the_configured_kinds_are_redacted() -> None:
    guards = Guards(GuardSettings(redact=["email"]))
    verdict = guards.check_output("a@example.com 4111 1111 1111 1111")
    assert (verdict.reason, verdict.text) == ("redacted 1 email", "[redacted email] 4111 1111 1111 1111")
    nothing = Guards(GuardSettings(redact=[])).check_output("a@example.com")
    assert nothing.action == "allow" and "guards.redact is empty" in nothing.reason


def test_hostile_long_outputs_run(guards: Guards) -> None:
    # No timing assertion: a catastrophic pattern would make this test hang instead of pass.
    # 250 kB each: enough that quadratic backtracking would take many minutes, small enough to keep the suite fast.
    for text in ["a" * 250_000, "1 " * 125_000, "a@" * 125_000, "+1 " * 80_000, "4111 " * 50_000,
                 "token= " * 35_000, "-----BEGIN PRIVATE KEY-----" * 10_000]:
        assert guards.check_output(text).action in ("allow", "redact")
