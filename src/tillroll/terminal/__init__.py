"""The POS terminal: engine (state machine), journal, host link, printer, receipts.

The public API is :class:`Terminal` (one terminal over its data dir) and the types it returns.
"""

from tillroll.terminal.config import ConfigError, HostAddress, TerminalConfig, load_config, save_config
from tillroll.terminal.engine import InputError, Result, Terminal, TerminalError, build_reversal
from tillroll.terminal.hostlink import HostLink, LinkResult, LinkStatus, TcpHostLink
from tillroll.terminal.journal import Alert, Entry, Journal
from tillroll.terminal.reversals import ReversalStep
from tillroll.terminal.states import (
    IllegalTransition,
    Outcome,
    ReceiptState,
    RefundState,
    ReversalReason,
    ReversalState,
    SettlementState,
    TxnKind,
    TxnState,
)

__all__ = [
    "Alert",
    "ConfigError",
    "Entry",
    "HostAddress",
    "HostLink",
    "IllegalTransition",
    "InputError",
    "Journal",
    "LinkResult",
    "LinkStatus",
    "Outcome",
    "ReceiptState",
    "RefundState",
    "Result",
    "ReversalReason",
    "ReversalState",
    "ReversalStep",
    "SettlementState",
    "TcpHostLink",
    "Terminal",
    "TerminalConfig",
    "TerminalError",
    "TxnKind",
    "TxnState",
    "build_reversal",
    "load_config",
    "save_config",
]
