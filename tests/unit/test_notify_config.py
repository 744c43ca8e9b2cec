"""The relay's configuration is checked once, at start, with messages that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tillroll.notify.config import ConfigError, NotifyConfig
from tillroll.notify.http import FINAL_REFUSALS
from tillroll.notify.outbox import MESSAGE_ID_MAX, Channel
from tillroll.notify.routing import message_id
from tillroll.notify.webhook import WEBHOOK_FINAL_REFUSALS


def options(**kw: object) -> dict[str, object]:
    return {"db": None, "journal": None, "smtp": None, "sms_url": None, **kw}


def test_back_office_options() -> None:
    config = NotifyConfig.from_options(**options(smtp="127.0.0.1:2525", sms_url="http://127.0.0.1:8026"))  # type: ignore[arg-type]
    assert config.smtp is not None and (config.smtp.host, config.smtp.port) == ("127.0.0.1", 2525)
    assert config.sms_url == "http://127.0.0.1:8026"
    default_port = NotifyConfig.from_options(**options(smtp="mail.example"))  # type: ignore[arg-type]
    assert default_port.smtp is not None and default_port.smtp.port == 25


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"smtp": "host:port"}, "--smtp"),
        ({"smtp": "host:0"}, "--smtp"),
        ({"sms_url": "127.0.0.1:8026"}, "--sms-url"),
        ({"journal": Path("/nonexistent")}, "not a terminal's data folder"),
        ({"journal": Path("."), "smtp": "h:25"}, "give no --db, --smtp or --sms-url"),
        ({"schedule_scale": -1.0}, "--schedule-scale"),
    ],
)
def test_bad_options_are_refused_with_what_to_do(given: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        NotifyConfig.from_options(**options(**given))  # type: ignore[arg-type]


def test_journal_options(tmp_path: Path) -> None:
    config = NotifyConfig.from_options(**options(journal=tmp_path))  # type: ignore[arg-type]
    assert config.journal == tmp_path and config.smtp is None


def test_message_ids_are_stable_distinct_bounded_and_dot_free() -> None:
    a = message_id("e_receipt:T0000001:000001.000123", Channel.EMAIL, "a@example.com")
    assert a == message_id("e_receipt:T0000001:000001.000123", Channel.EMAIL, "a@example.com")
    assert a != message_id("e_receipt:T0000001:000001.000123", Channel.EMAIL, "b@example.com")
    assert a != message_id("e_receipt:T0000001:000001.000123", Channel.SMS, "a@example.com")
    # Two fact ids that differ only in characters the id replaces still give distinct ids.
    assert message_id("x:1.2", Channel.SMS, "+8613800138000") != message_id(
        "x-1-2", Channel.SMS, "+8613800138000"
    )
    assert "." not in a and ":" not in a and a.startswith("e_receipt-T0000001-000001-000123_email_")
    assert len(message_id("f" * 500, Channel.WEBHOOK, "https://x/" + "p" * 200)) <= MESSAGE_ID_MAX


def test_webhooks_retry_every_refusal_but_410() -> None:
    assert frozenset({410}) == WEBHOOK_FINAL_REFUSALS
    assert 429 not in FINAL_REFUSALS and 503 not in FINAL_REFUSALS and 408 not in FINAL_REFUSALS
