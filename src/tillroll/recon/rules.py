"""The matching rules: each a named query that puts what it finds into ``rc_found``.

A rule is one ``INSERT INTO rc_found SELECT ...`` over the run's working tables (``stage``) and the
store; its docstring is the rule in words (docs/recon.md lists them). A found row is (class, key,
the payment's references, the evidence as JSON built in SQL, with ``"planned"``: the automatic
action's steps). The key names the payment the way a person would look it up, so a rerun finds
the same exception: ``card:rrn:<RRN>`` (else ``card:<TID>:<batch>:<STAN>``), ``wallet:<order>``.

"Pending" (not an exception yet): a payment whose other side may still come — a host approval
the terminal has not uploaded yet (newer than the ageing window), a wallet payment near the day's
end whose statement row may be on tomorrow's statement, or any wallet payment before the day's
statement is imported.
"""

from __future__ import annotations

from tillroll.recon.found import FOUND_COLS, PLANNED, Params, rc_found
from tillroll.recon.rules_card import (
    classify_card,
    notified_not_final,
    pending_card,
    refunds_exceed_sale,
    signin_failures,
)
from tillroll.recon.rules_host import card_duplicates, ledger_and_issuer
from tillroll.recon.rules_wallet import (
    classify_wallet,
    notified_not_final_wallet,
    pending_wallet,
    refunds_exceed_order,
    statement_duplicates,
)

__all__ = [
    "CARD_RULES",
    "FOUND_COLS",
    "HOST_RULES",
    "PLANNED",
    "RULES",
    "WALLET_RULES",
    "Params",
    "card_duplicates",
    "classify_card",
    "classify_wallet",
    "ledger_and_issuer",
    "notified_not_final",
    "notified_not_final_wallet",
    "pending_card",
    "pending_wallet",
    "rc_found",
    "refunds_exceed_order",
    "refunds_exceed_sale",
    "signin_failures",
    "statement_duplicates",
]

# The rules by what they read, so that two connections can run them side by side (``run``):
# the card rail's (rc_card), the wallet rail's (rc_stmt, rc_wallet), and the host's own
# (rc_sale: the host's sales of the day). No two groups can find the same (class, key).
CARD_RULES = (classify_card, refunds_exceed_sale, notified_not_final, signin_failures)
WALLET_RULES = (classify_wallet, statement_duplicates, refunds_exceed_order, notified_not_final_wallet)
HOST_RULES = (card_duplicates, ledger_and_issuer)  # the longer first
RULES = CARD_RULES + WALLET_RULES + HOST_RULES
