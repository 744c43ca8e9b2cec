"""The host's state values kept in its tables, as enums (compared and stored as their strings)."""

from __future__ import annotations

import enum


class SessionState(enum.StrEnum):
    """A terminal's key session (``sessions.state``).

    ACTIVE → SIGNED_OUT (a newer sign-in replaced it) or SETTLED (its batch was settled; the
    session's keys still verify the batch upload that may follow). Nothing leaves SIGNED_OUT.
    """

    ACTIVE = "active"
    SIGNED_OUT = "signed_out"
    SETTLED = "settled"


# The sessions whose keys still verify a request's MAC.
MAC_VALID_STATES = frozenset({SessionState.ACTIVE, SessionState.SETTLED})
