"""HTTP channels (SMS gateway, webhooks, the back office's intake): one kept-open client each,
and one rule for what an answer means."""

from __future__ import annotations

from typing import Any

import httpx

from tillroll.notify.outbox import DeliveryFailed

HTTP_TIMEOUT_S = 10.0
# Answers that will not change on a retry: the request itself is wrong, or the endpoint is gone.
FINAL_REFUSALS = frozenset({400, 401, 403, 404, 405, 410, 413, 415, 422})


def client(timeout_s: float = HTTP_TIMEOUT_S) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)


def post(
    http: httpx.Client,
    message_id: str,
    url: str,
    *,
    headers: dict[str, str],
    final_refusals: frozenset[int] = FINAL_REFUSALS,
    **kw: Any,
) -> None:
    """POST and translate the outcome: 2xx delivered; a final refusal dead at once; anything
    else (408, 429, 5xx, a timeout, a refused connection) retried."""
    try:
        response = http.post(url, headers=headers, **kw)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(message_id, f"{type(exc).__name__}: {exc}") from None
    if 200 <= response.status_code < 300:
        return
    retryable = response.status_code not in final_refusals
    raise DeliveryFailed(
        message_id,
        f"HTTP {response.status_code} from {url}",
        retryable=retryable,
        retry_after_s=retry_after_s(response.headers.get("retry-after")),
    )


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds only; an HTTP date is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
