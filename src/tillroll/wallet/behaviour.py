"""How a user's phone answers (WALLET.md §6 behaviours), parsed once when the user is added. Pure."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass


class BehaviourKind(enum.StrEnum):
    OK = "ok"  # pays at once
    CONFIRM = "confirm"  # USERPAYING, confirmed after seconds_s
    NEVER = "never"  # USERPAYING, never confirmed (the provider closes it)
    FAIL = "fail"  # refused with err_code
    ERROR_ONCE = "error-once"  # the first pay pays, but answers SYSTEMERROR
    SLOW = "slow"  # pays at once, answers after seconds_s (the lost response)


# err_codes a ``fail:CODE`` user may be given: the contract's refusals that are about the
# customer (the ORDER* and OUT_TRADE_NO_USED ones are about the order number, and happen by
# themselves), plus SYSTEMERROR for "unknown, and in fact not paid" (the order shows PAYERROR).
FAIL_CODES = frozenset({"NOTENOUGH", "AUTHCODEEXPIRE", "AUTH_CODE_INVALID", "SYSTEMERROR"})
SECONDS_MAX = 3600.0
_SECONDS_RE = re.compile(r"^\d{1,6}(\.\d{1,3})?$")


class BehaviourError(ValueError):
    pass


@dataclass(frozen=True)
class Behaviour:
    kind: BehaviourKind
    seconds_s: float = 0.0
    err_code: str = ""

    def __str__(self) -> str:
        if self.kind in (BehaviourKind.CONFIRM, BehaviourKind.SLOW):
            return f"{self.kind}:{self.seconds_s:g}"
        if self.kind is BehaviourKind.FAIL:
            return f"fail:{self.err_code}"
        return str(self.kind)


def parse_behaviour(text: str) -> Behaviour:
    """``ok``, ``confirm:S``, ``never``, ``fail:CODE``, ``error-once`` or ``slow:S``."""
    name, sep, arg = text.strip().partition(":")
    try:
        kind = BehaviourKind(name)
    except ValueError:
        raise BehaviourError(
            f"behaviour {text!r} is not one of ok, confirm:S, never, fail:CODE, error-once, slow:S"
        ) from None
    if kind in (BehaviourKind.CONFIRM, BehaviourKind.SLOW):
        if not sep or not _SECONDS_RE.match(arg):
            raise BehaviourError(f"behaviour {kind}:S needs S in seconds, e.g. {kind}:3 (got {text!r})")
        seconds = float(arg)
        if not math.isfinite(seconds) or seconds > SECONDS_MAX:
            raise BehaviourError(f"behaviour {text!r}: S must be at most {SECONDS_MAX:g} seconds")
        return Behaviour(kind, seconds_s=seconds)
    if kind is BehaviourKind.FAIL:
        if arg not in FAIL_CODES:
            raise BehaviourError(
                f"behaviour fail:CODE needs CODE in {', '.join(sorted(FAIL_CODES))} (got {text!r})"
            )
        return Behaviour(kind, err_code=arg)
    if sep:
        raise BehaviourError(f"behaviour {kind} takes no argument (got {text!r})")
    return Behaviour(kind)
