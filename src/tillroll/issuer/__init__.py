"""The simulated issuing bank."""

from tillroll.issuer.bank import CardError, CardStatus, Outcome, Reason

__all__ = ["CardError", "CardStatus", "Outcome", "Reason"]
