"""`tillroll pos …`: the POS terminal from the command line.

Exit codes: 0 approved / done, 1 declined or not completed (the message says what to do next),
2 bad input (the message says which value and how to write it).
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich import box
from rich.table import Table

from tillroll.clock import DEFAULT_MERCHANT_TZ, to_merchant_local
from tillroll.money import AmountError, format_yuan, parse_yuan
from tillroll.screen import wide_console
from tillroll.terminal.config import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    ConfigError,
    HostAddress,
    TerminalConfig,
    parse_tmk,
    save_config,
)
from tillroll.terminal.engine import (
    InputError,
    Result,
    Terminal,
    TerminalError,
    parse_trace,
)
from tillroll.terminal.journal import BatchState
from tillroll.terminal.states import Outcome
from tillroll.terminal.wallet_config import WalletConfigError, WalletSettings
from tillroll.terminal.wallet_journal import WalletOrder, WalletRefund

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The POS terminal: sign-in, sale, void, balance, reversals, receipts and its journal.",
)
console = wide_console(highlight=False)
err_console = wide_console(stderr=True, highlight=False)

EXIT_DECLINED = 1
EXIT_BAD_INPUT = 2

_STYLE = {
    Outcome.APPROVED: "bold green",
    Outcome.DONE: "green",
    Outcome.DECLINED: "bold red",
    Outcome.REVERSED: "bold yellow",
    Outcome.REVERSAL_PENDING: "bold yellow",
    Outcome.REFUND_UNKNOWN: "bold yellow",
    Outcome.WALLET_CANCELLED: "bold yellow",
    Outcome.WALLET_PENDING: "bold yellow",
    Outcome.SETTLED: "bold green",
    Outcome.SETTLED_NOT_BALANCED: "bold yellow",
}
SUCCESS = frozenset({Outcome.APPROVED, Outcome.DONE, Outcome.SETTLED, Outcome.SETTLED_NOT_BALANCED})


def _bad_input(message: str) -> NoReturn:
    err_console.print(f"[bold red]输入错误 / bad input:[/] {message}")
    raise typer.Exit(EXIT_BAD_INPUT)


SECRET_FROM_INPUT = "-"
NOTIFY_OPTION = typer.Option("--notify", help="The customer's mobile number or e-mail, for the e-receipt.")


def _secret(value: str, what: str) -> str:
    """``-`` means: read it from a hidden prompt on a terminal, else one line of standard input,
    so that a PIN or a TMK need not sit in the shell history or the process list."""
    if value != SECRET_FROM_INPUT:
        return value
    read = (getpass.getpass(f"{what}: ") if sys.stdin.isatty() else sys.stdin.readline()).strip()
    if not read:
        _bad_input(f"no {what} was given on the prompt or standard input")
    return read


def _data_dir(ctx: typer.Context) -> Path:
    obj = ctx.obj or {}
    return Path(obj.get("dir") or DEFAULT_DATA_DIR)


def _open(ctx: typer.Context) -> Terminal:
    try:
        return Terminal.open(_data_dir(ctx))
    except ConfigError as exc:
        _bad_input(str(exc))
    except ValueError as exc:  # e.g. a printer URL that does not parse
        _bad_input(str(exc))
    except TerminalError as exc:
        err_console.print(f"[bold red]终端忙或故障 / terminal busy or failing:[/] {exc}")
        raise typer.Exit(EXIT_DECLINED) from None


def _show(result: Result) -> None:
    style = _STYLE.get(result.outcome, "bold red")
    console.print(f"[{style}]{result.text}[/]")
    details = []
    if result.trace:
        details.append(f"凭证号 TRACE {result.trace}")
    if result.batch:
        details.append(f"批次号 BATCH {result.batch}")
    if result.amount_minor is not None:
        details.append(f"金额 AMOUNT RMB {format_yuan(result.amount_minor)}")
    if result.order_no:
        details.append(f"订单号 ORDER {result.order_no}")
    if result.rrn:
        details.append(f"参考号 RRN {result.rrn}")
    if result.auth_code:
        details.append(f"授权码 AUTH {result.auth_code}")
    if result.balance_minor is not None:
        details.append(f"余额 BALANCE RMB {format_yuan(result.balance_minor)}")
    if details:
        console.print("  " + "  ".join(details))
    if result.receipt is not None and result.outcome is Outcome.APPROVED:
        if result.receipt.value == "printed":
            console.print("  签购单已打印 / slips printed (merchant + cardholder copy)")
        else:
            console.print(
                "[yellow]  签购单未打印，已生成电子凭证 / slip not printed: receipt owed, "
                "run `tillroll pos reprint` when the printer is fixed[/]"
            )
            if result.e_receipt is not None:
                console.print(f"  电子凭证 E-RECEIPT {result.e_receipt}")
    if result.e_receipt_url is not None and result.outcome is Outcome.APPROVED:
        console.print(f"  电子凭证链接 E-RECEIPT LINK {result.e_receipt_url}", soft_wrap=True)


def _finish(result: Result) -> None:
    _show(result)
    if result.outcome not in SUCCESS:
        raise typer.Exit(EXIT_DECLINED)


def _fen(amount: str) -> int:
    """Yuan as typed -> fen; the engine checks the range (`check_amount`)."""
    try:
        return parse_yuan(amount)
    except AmountError as exc:
        _bad_input(str(exc))


def _run(ctx: typer.Context, op: str, *args: object, **kwargs: object) -> None:
    term = _open(ctx)
    try:
        result: Result = getattr(term, op)(*args, **kwargs)
        _send_facts(term)
    except InputError as exc:
        _bad_input(str(exc))
    except TerminalError as exc:
        err_console.print(f"[bold red]终端故障 / terminal error:[/] {exc}")
        raise typer.Exit(EXIT_DECLINED) from None
    finally:
        term.close()
    _finish(result)


def _send_facts(term: Terminal) -> None:
    """Right after the operation, for a bounded time: an e-receipt goes out at once."""
    try:
        done = term.send_facts()
    except Exception as exc:  # the sale stands whatever the back office does; the facts wait
        err_console.print(f"[yellow]后台未送达 / back office not reached: {type(exc).__name__}[/]")
        return
    if done is not None and done.pending:
        console.print(f"[yellow]  {done.pending} 条通知待发送 / fact(s) wait for the back office[/]")


@app.callback()
def main(
    ctx: typer.Context,
    dir: Annotated[
        Path,
        typer.Option("--dir", envvar=DATA_DIR_ENV, help="The terminal's data dir (journal, settings)."),
    ] = DEFAULT_DATA_DIR,
) -> None:
    ctx.obj = {"dir": dir}


@app.command()
def init(
    ctx: typer.Context,
    tid: Annotated[str, typer.Option("--tid", help="Terminal id, 8 characters.")],
    mid: Annotated[str, typer.Option("--mid", help="Merchant id, 15 characters.")],
    tmk: Annotated[
        str,
        typer.Option("--tmk", help="Terminal master key, 32 hex digits; - to read it from a prompt/stdin."),
    ],
    host: Annotated[str, typer.Option("--host", help="Acquirer host HOST:PORT.")],
    backup_host: Annotated[str | None, typer.Option("--backup-host", help="Second line HOST:PORT.")] = None,
    printer: Annotated[str | None, typer.Option("--printer", help="tcp://HOST:PORT or file:PATH.")] = None,
    merchant_name: Annotated[str, typer.Option("--merchant-name", help="Name printed on slips.")] = "",
    operator: Annotated[str, typer.Option("--operator", help="Cashier code, 3 characters.")] = "001",
    response_timeout_s: Annotated[float, typer.Option("--response-timeout-s")] = 30.0,
    connect_timeout_s: Annotated[float, typer.Option("--connect-timeout-s")] = 5.0,
    merchant_tz: Annotated[
        str, typer.Option("--merchant-tz", help="Merchant time zone (IANA) for slips and the journal.")
    ] = DEFAULT_MERCHANT_TZ,
    wallet: Annotated[
        str | None, typer.Option("--wallet", help="QR wallet service http://HOST:PORT.")
    ] = None,
    wallet_merchant: Annotated[
        str | None, typer.Option("--wallet-merchant", help="The merchant's wallet id (mch_id).")
    ] = None,
    wallet_key: Annotated[
        str | None,
        typer.Option("--wallet-key", help="The wallet signing key; - to read it from a prompt/stdin."),
    ] = None,
    wallet_query_interval_s: Annotated[float, typer.Option("--wallet-query-interval-s")] = 5.0,
    wallet_query_window_s: Annotated[float, typer.Option("--wallet-query-window-s")] = 45.0,
    wallet_response_timeout_s: Annotated[float, typer.Option("--wallet-response-timeout-s")] = 10.0,
    backoffice: Annotated[
        str | None, typer.Option("--backoffice", help="Back office http://HOST:PORT (tillroll web).")
    ] = None,
) -> None:
    """Set up this terminal (settings, TMK and wallet key sealed, in the data dir)."""
    wallet_settings = None
    if wallet is not None or wallet_merchant is not None or wallet_key is not None:
        if wallet is None or wallet_merchant is None or wallet_key is None:
            _bad_input(
                "the wallet needs all three: --wallet http://HOST:PORT --wallet-merchant ID --wallet-key KEY"
            )
        try:
            wallet_settings = WalletSettings(
                url=wallet,
                merchant=wallet_merchant,
                key=_secret(wallet_key, "wallet key"),
                query_interval_s=wallet_query_interval_s,
                query_window_s=wallet_query_window_s,
                response_timeout_s=wallet_response_timeout_s,
            )
        except WalletConfigError as exc:
            _bad_input(str(exc))
    try:
        config = TerminalConfig(
            tid=tid,
            mid=mid,
            tmk=parse_tmk(_secret(tmk, "TMK (32 hex digits)")),
            host=HostAddress.parse(host),
            backup_host=HostAddress.parse(backup_host) if backup_host else None,
            printer_url=printer,
            merchant_name=merchant_name,
            operator=operator,
            response_timeout_s=response_timeout_s,
            connect_timeout_s=connect_timeout_s,
            merchant_tz=merchant_tz,
            wallet=wallet_settings,
            backoffice_url=backoffice,
        )
        path = save_config(_data_dir(ctx), config)
    except ConfigError as exc:
        _bad_input(str(exc))
    console.print(f"[green]终端已设置 / terminal set up:[/] TID {tid} MID {mid} host {config.host}")
    if config.backup_host:
        console.print(f"  备用线路 / backup line {config.backup_host}")
    if config.wallet:
        console.print(f"  钱包 / wallet {config.wallet.url} merchant {config.wallet.merchant}")
    console.print(f"  {path}")


@app.command("sign-in")
def sign_in(ctx: typer.Context) -> None:
    """Sign in: fetch fresh working keys and the batch number."""
    _run(ctx, "sign_in")


@app.command("sign-out")
def sign_out(ctx: typer.Context) -> None:
    """Sign out: end the working-key session."""
    _run(ctx, "sign_out")


@app.command()
def balance(
    ctx: typer.Context,
    card: Annotated[str, typer.Option("--card", help="Card number (PAN).")],
    expiry: Annotated[str, typer.Option("--expiry", help="Card expiry YYMM.")],
    pin: Annotated[str, typer.Option("--pin", help="Cardholder PIN; - to read it from a prompt/stdin.")],
) -> None:
    """Balance inquiry (PIN required)."""
    _run(ctx, "balance", card, expiry, _secret(pin, "PIN"))


@app.command()
def sale(
    ctx: typer.Context,
    amount: Annotated[str, typer.Argument(help="Amount in yuan, e.g. 12.50.")],
    card: Annotated[str, typer.Option("--card", help="Card number (PAN).")],
    expiry: Annotated[str, typer.Option("--expiry", help="Card expiry YYMM.")],
    pin: Annotated[
        str | None, typer.Option("--pin", help="Cardholder PIN (optional); - to read it from a prompt/stdin.")
    ] = None,
    notify: Annotated[str | None, NOTIFY_OPTION] = None,
) -> None:
    """Sale (消费)."""
    pin = _secret(pin, "PIN") if pin is not None else None
    _run(ctx, "sale", _fen(amount), card, expiry, pin, notify=notify)


@app.command()
def void(
    ctx: typer.Context,
    trace: Annotated[str, typer.Argument(help="Voucher (trace) number of a sale in this batch.")],
) -> None:
    """Void (消费撤销) a sale of the current batch."""
    _run(ctx, "void", trace)


@app.command()
def refund(
    ctx: typer.Context,
    amount: Annotated[str, typer.Argument(help="Amount to refund in yuan, e.g. 4.00.")],
    rrn: Annotated[
        str | None, typer.Option("--rrn", help="The original sale's reference number (参考号).")
    ] = None,
    date: Annotated[
        str | None, typer.Option("--date", help="The original sale's date MMDD, from its slip.")
    ] = None,
    trace: Annotated[
        str | None, typer.Option("--trace", help="Original voucher number (if not in this journal).")
    ] = None,
    batch: Annotated[
        str | None, typer.Option("--batch", help="Original batch number (if not in this journal).")
    ] = None,
    card: Annotated[
        str | None, typer.Option("--card", help="Card number (PAN), if the sale is not in this journal.")
    ] = None,
    expiry: Annotated[str | None, typer.Option("--expiry", help="Card expiry YYMM, for the slip.")] = None,
    order: Annotated[
        str | None,
        typer.Option("--order", help="A wallet payment's order number (订单号), instead of --rrn."),
    ] = None,
    notify: Annotated[
        str | None, typer.Option("--notify", help="Customer's phone or e-mail for the refund notice.")
    ] = None,
) -> None:
    """Refund (退货) of a sale or a wallet payment (--order), of this batch or an earlier one;
    never more than is left."""
    if order is not None:
        if rrn is not None or date is not None or card is not None:
            _bad_input("a wallet refund names its order with --order only (no --rrn/--date/--card)")
        _run(ctx, "refund_order", _fen(amount), order, notify)
        return
    if rrn is None or date is None:
        _bad_input(
            "a card refund needs --rrn and --date from the sale's slip (or --order for a wallet payment)"
        )
    _run(
        ctx,
        "refund",
        _fen(amount),
        rrn,
        date,
        trace=trace,
        batch=batch,
        pan=card,
        expiry=expiry,
        notify=notify,
    )


@app.command()
def qr(
    ctx: typer.Context,
    amount: Annotated[str, typer.Argument(help="Amount in yuan, e.g. 12.50.")],
    code: Annotated[str, typer.Option("--code", help="The customer's payment code (付款码), as scanned.")],
    notify: Annotated[
        str | None, typer.Option("--notify", help="Customer's phone or e-mail for the e-receipt/notices.")
    ] = None,
) -> None:
    """Wallet payment (扫码支付): charge the customer's payment code (微信支付 / 支付宝)."""
    _run(ctx, "qr", _fen(amount), code, notify)


@app.command()
def settle(ctx: typer.Context) -> None:
    """Settlement (结算): send the batch's totals; upload the batch if not balanced; next batch."""
    _run(ctx, "settle")


@app.command()
def reprint(
    ctx: typer.Context,
    trace: Annotated[str | None, typer.Argument(help="Voucher number; the last transaction if none.")] = None,
) -> None:
    """Reprint slips (重打印); clears an owed receipt."""
    try:
        t = parse_trace(trace) if trace is not None else None
    except InputError as exc:
        _bad_input(str(exc))
    _run(ctx, "reprint", t)


@app.command()
def upload(
    ctx: typer.Context,
    everything: Annotated[
        bool, typer.Option("--all", help="Send every entry again from the first (idempotent).")
    ] = False,
) -> None:
    """Upload the journal to the back office now (上送流水): changed entries, the terminal's
    status, and the back office's commands run and reported (`pos run` does it by itself)."""
    term = _open(ctx)
    try:
        if term.uploader is None:
            _bad_input("no back office is set up: run `tillroll pos init … --backoffice http://HOST:PORT`")
        done = term.upload_journal(everything=everything)
    except TerminalError as exc:
        err_console.print(f"[bold red]终端故障 / terminal error:[/] {exc}")
        raise typer.Exit(EXIT_DECLINED) from None
    finally:
        term.close()
    assert done is not None
    line = f"{done.entries} 条流水已上送 / entries sent, {done.commands_run} 条指令已执行 / command(s) run"
    if done.failed is not None:
        console.print(f"[bold yellow]上送未完成 / upload not finished: {done.failed}[/]")
        console.print(f"  {line}; 其余留在终端，稍后重试 / the rest waits in the journal, retried later")
        raise typer.Exit(EXIT_DECLINED)
    more = "" if done.caught_up else "; 还有更多 / more to send: run it again"
    console.print(f"[green]上送完成 / uploaded:[/] {line}{more}")


@app.command()
def recover(ctx: typer.Context) -> None:
    """Send pending reversals now, then every open refund again (the same request)."""
    _run(ctx, "recover")


@app.command()
def journal(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 200,
) -> None:
    """The terminal's journal (card numbers masked)."""
    term = _open(ctx)
    try:
        entries = term.entries(limit)
        pending = len(term.pending_reversals())
        open_refunds = len(term.open_refunds())
        settled = term.settlements(5)
        closed = term.journal.closed_batches(10)
        alerts = term.alerts(10)
        wallet_orders = term.wallet_orders(limit)
        wallet_refunds = term.wallet_refund_list(limit)
    except TerminalError as exc:
        err_console.print(f"[bold red]终端故障 / terminal error:[/] {exc}")
        raise typer.Exit(EXIT_DECLINED) from None
    finally:
        term.close()
    table = Table(
        title=f"终端流水 JOURNAL — TID {term.config.tid} (卡号 card numbers masked)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    zone = term.config.zone  # the journal keeps UTC instants; people read merchant-local time
    for col in (
        "BATCH-TRACE",
        "TIME",
        "TYPE",
        "STATE",
        "AMOUNT",
        "CARD",
        "RRN",
        "AUTH",
        "RECEIPT",
        "REVERSAL",
    ):
        # a masked card number is never cut or wrapped; the rest folds on a narrow screen
        table.add_column(col, no_wrap=col == "CARD", min_width=19 if col == "CARD" else None, overflow="fold")
    for e in reversed(entries):
        reversal = ""
        if e.reversal_state is not None:
            reason = e.reversal_reason.value if e.reversal_reason else ""
            reversal = f"{e.reversal_state.value} {reason}"
        table.add_row(
            f"{e.batch}-{e.stan}",
            f"{to_merchant_local(e.approved_at or e.created_at, zone):%m-%d %H:%M:%S}",
            e.kind.value,
            f"{e.state.value} {e.response_code or ''}".strip(),
            format_yuan(e.amount_minor) if e.amount_minor is not None else "",
            e.pan_masked,
            e.rrn or "",
            e.auth_code or "",
            e.receipt.value,
            reversal,
        )
    console.print(table)
    if wallet_orders or wallet_refunds:
        console.print(_wallet_table(term, wallet_orders, wallet_refunds))
    if pending:
        console.print(
            f"[bold yellow]{pending} 笔冲正待发送 / reversal(s) pending: run `tillroll pos recover`[/]"
        )
    if open_refunds:
        console.print(
            f"[bold yellow]{open_refunds} 笔退货未完成 / refund(s) not finished: "
            "run `tillroll pos recover`[/]"
        )
    for st in reversed(settled):
        t = st.totals
        console.print(
            f"结算 settlement {st.batch} {st.state.value}: 借记 debits {t.debit_count} "
            f"RMB {format_yuan(t.debit_minor)}, "
            f"贷记 credits {t.credit_count} RMB {format_yuan(t.credit_minor)}"
            + (f", uploaded {st.items_uploaded}" if st.items_uploaded else "")
            + (f", next batch {st.next_batch}" if st.next_batch else "")
        )
    for b in reversed(closed):
        if b.state is BatchState.CLOSED_BY_HOST:
            when = f" {to_merchant_local(b.closed_at, zone):%Y-%m-%d %H:%M}" if b.closed_at else ""
            console.print(
                f"[yellow]批次 batch {b.batch} 已由主机关闭 closed by the host{when}[/]"
                + (f", next batch {b.next_batch}" if b.next_batch else "")
                + ": not settled or uploaded by this terminal; the acquirer settled it"
            )
    for a in alerts:
        console.print(
            f"[yellow]alert[/] {to_merchant_local(a.at, zone):%Y-%m-%d %H:%M:%S} {a.kind}: {a.text}"
        )


def _wallet_table(term: Terminal, orders: list[WalletOrder], refunds: list[WalletRefund]) -> Table:
    table = Table(title="钱包订单 WALLET ORDERS (付款码 codes masked)", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("BATCH-TRACE", "TIME", "TYPE", "STATE", "AMOUNT", "BRAND", "CODE", "ORDER", "RECEIPT"):
        table.add_column(col, no_wrap=col in ("CODE", "ORDER"), overflow="fold")
    zone = term.config.zone
    by_id = {o.id: o for o in orders}
    for o in reversed(orders):
        table.add_row(
            f"{o.batch}-{o.stan}",
            f"{to_merchant_local(o.paid_at or o.created_at, zone):%m-%d %H:%M:%S}",
            "qr",
            f"{o.state.value} {o.err_code or ''}".strip() if o.state.value != "success" else "success",
            format_yuan(o.amount_minor),
            o.brand.zh,
            o.code_masked,
            o.out_trade_no,
            o.receipt.value,
        )
    for r in refunds:
        parent = by_id.get(r.order_id)
        table.add_row(
            f"{r.batch}-{r.stan}",
            f"{to_merchant_local(r.approved_at or r.created_at, zone):%m-%d %H:%M:%S}",
            "qr refund",
            f"{r.state.value} {r.err_code or ''}".strip() if r.state.value != "approved" else "approved",
            format_yuan(r.amount_minor),
            parent.brand.zh if parent else "",
            parent.code_masked if parent else "",
            r.out_refund_no,
            r.receipt.value,
        )
    return table


@app.command()
def run(ctx: typer.Context) -> None:
    """Stay resident: send pending reversals with backoff, sign in again, echo, settle daily.
    Stops on SIGTERM or Ctrl-C; other `pos` commands work meanwhile."""
    import signal
    import threading

    from tillroll.terminal.resident import Resident

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"resident: running on {_data_dir(ctx)} (SIGTERM or Ctrl-C stops)")
    Resident(_data_dir(ctx), stop=stop, out=lambda line: console.print(line, markup=False)).run()
    console.print("resident: stopped")


@app.command()
def status(ctx: typer.Context) -> None:
    """The terminal's state: session and key age, batch, pending reversals, owed receipts, alerts."""
    from tillroll.terminal.resident import status as read_status

    term = _open(ctx)
    try:
        rows = read_status(term, term.clock).rows
    finally:
        term.close()
    table = Table(title="终端状态 STATUS", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("WHAT", no_wrap=True)
    table.add_column("STATE", overflow="fold")
    for what, state in rows:
        table.add_row(what, state)
    console.print(table)
