"""The provider's HTTP edge (FastAPI): read, authenticate and validate a call, hand it to the
service in a worker thread, and answer HTTP 200 with WALLET.md §1's envelope whatever happened.

The one boundary where failures become answers: a body that is not a JSON object, an unknown
merchant or a bad signature → ``return_code`` FAIL; a value that is not a string or an integer, or
a missing or invalid field → ``result_code`` FAIL / PARAM_ERROR; an unexpected error inside the
service (a bug, the database gone) → SYSTEMERROR, which the client treats as "unknown: query", and
a log line. Nothing in this module changes data; a refused request never reaches the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from tillroll.wallet import fields as f
from tillroll.wallet.core import ErrCode
from tillroll.wallet.notifier import Notifier
from tillroll.wallet.service import Reply, WalletService, fail
from tillroll.wallet.sign import new_nonce, signed, verify

log = logging.getLogger(__name__)
BODY_MAX_BYTES = 64 * 1024
JSON_TYPE = "application/json; charset=utf-8"

Handler = Callable[[WalletService, str, Mapping[str, object]], Reply]
T = TypeVar("T")


class Workers:
    """The threads that run the service's (blocking) database calls, taken first come first
    served. A few threads, not one per request: SQLite lets one transaction in at a time and
    PostgreSQL has a bounded pool, so more threads only fought over the interpreter and made the
    slowest answers several times slower than the middle one."""

    def __init__(self, count: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="wallet-db")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))


def _json(content: Mapping[str, object]) -> Response:
    return Response(json.dumps(content, ensure_ascii=False).encode("utf-8"), media_type=JSON_TYPE)


def return_fail(message: str) -> Response:
    return _json({"return_code": "FAIL", "return_msg": message})


def answer(reply: Reply, key: str) -> Response:
    body: dict[str, object] = {"return_code": "SUCCESS", "return_msg": "OK", **reply.fields}
    body["nonce_str"] = new_nonce()
    return _json(signed(body, key))


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is larger than BODY_MAX_BYTES (not read further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _authenticate(
    service: WalletService, workers: Workers, data: Mapping[str, object]
) -> tuple[str, str] | Response:
    """(mch_id, key) of a signed request, or the FAIL answer."""
    mch_id = data.get("mch_id")
    if not isinstance(mch_id, str) or not f.MCH_ID_RE.match(mch_id):
        return return_fail("mch_id is missing or not valid")
    key = service.known_key(mch_id) or await workers.run(service.merchant_key, mch_id)
    if key is None:
        return return_fail(f"unknown mch_id {mch_id}")
    if f.bad_value_types(data) is None and not verify(data, key):
        return return_fail("签名错误 / signature is not valid")
    return mch_id, key


async def _call(
    service: WalletService, workers: Workers, data: Mapping[str, object], handler: Handler
) -> Response:
    auth = await _authenticate(service, workers, data)
    if isinstance(auth, Response):
        return auth
    mch_id, key = auth
    bad = f.bad_value_types(data)
    if bad is not None:
        return answer(fail(ErrCode.PARAM_ERROR, f"{bad} must be a string or an integer"), key)
    try:
        f.nonce(data)
        reply = await workers.run(handler, service, mch_id, data)
    except f.FieldError as exc:
        return answer(fail(ErrCode.PARAM_ERROR, str(exc)), key)
    except Exception:
        log.exception("wallet call failed inside the provider: answered SYSTEMERROR")
        return answer(fail(ErrCode.SYSTEMERROR), key)
    if reply.delay_s > 0:
        await asyncio.sleep(reply.delay_s)  # slow:S — processed already; the answer comes late
    return answer(reply, key)


def _pay(service: WalletService, mch_id: str, data: Mapping[str, object]) -> Reply:
    return service.pay(mch_id, f.pay_request(data))


def _query(service: WalletService, mch_id: str, data: Mapping[str, object]) -> Reply:
    return service.query(mch_id, f.out_trade_no(data))


def _reverse(service: WalletService, mch_id: str, data: Mapping[str, object]) -> Reply:
    return service.reverse(mch_id, f.out_trade_no(data))


def _refund(service: WalletService, mch_id: str, data: Mapping[str, object]) -> Reply:
    return service.refund(mch_id, f.refund_request(data))


def _refund_query(service: WalletService, mch_id: str, data: Mapping[str, object]) -> Reply:
    return service.refund_query(mch_id, f.out_refund_no(data))


ROUTES: dict[str, Handler] = {
    "/v1/pay": _pay,
    "/v1/query": _query,
    "/v1/reverse": _reverse,
    "/v1/refund": _refund,
    "/v1/refund/query": _refund_query,
}


async def sweep_loop(service: WalletService, workers: Workers) -> None:
    """Due confirmations, closes and refunds, every sweep interval, until cancelled."""
    while True:
        try:
            await workers.run(service.sweep)
        except Exception:  # the database away for a moment: try again next sweep
            log.exception("wallet background sweep failed; retrying")
        await asyncio.sleep(service.config.sweep_interval_s)


async def notify_loop(service: WalletService, notifier: Notifier, workers: Workers) -> None:
    """Due notifications, each sent in its own task: a merchant that is slow to answer delays
    neither the other merchants' notifications nor the sweep (a USERPAYING order still closes at
    45 s). A claimed notification is leased (longer than the answer timeout), so it is not
    claimed again while its send is in flight."""
    in_flight: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient() as client:
        try:
            while True:
                try:
                    for delivery in await workers.run(notifier.claim_due):
                        task = asyncio.create_task(notifier.send(client, delivery))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                except Exception:
                    log.exception("wallet notification round failed; retrying")
                await asyncio.sleep(service.config.sweep_interval_s)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)


def create_app(service: WalletService, *, run_background: bool = True) -> FastAPI:
    notifier = Notifier(service)
    workers = Workers(service.config.db_workers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = (
            [
                asyncio.create_task(sweep_loop(service, workers)),
                asyncio.create_task(notify_loop(service, notifier, workers)),
            ]
            if run_background
            else []
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            workers.pool.shutdown(wait=True)

    app = FastAPI(
        title="tillroll wallet provider (simulated)", lifespan=lifespan, docs_url=None, redoc_url=None
    )

    def route(path: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            raw = await _read_body(request)
            if raw is None:
                return return_fail(f"body larger than {BODY_MAX_BYTES} bytes")
            try:
                data: Any = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return return_fail("body is not JSON (UTF-8)")
            if not isinstance(data, dict):
                return return_fail("body is not a JSON object")
            return await _call(service, workers, data, handler)

        endpoint.__name__ = path.strip("/").replace("/", "_")
        return endpoint

    for path, handler in ROUTES.items():
        app.add_api_route(path, route(path, handler), methods=["POST"], include_in_schema=False)

    @app.get("/v1/bill", include_in_schema=False)
    async def bill(request: Request) -> Response:
        data = dict(request.query_params)
        auth = await _authenticate(service, workers, data)
        if isinstance(auth, Response):
            return auth
        mch_id, key = auth
        try:
            f.nonce(data)
            day = f.bill_date(data)
        except f.FieldError as exc:
            return answer(fail(ErrCode.PARAM_ERROR, str(exc)), key)
        try:
            text = await workers.run(service.bill, mch_id, day)
        except Exception:
            log.exception("wallet bill failed inside the provider: answered SYSTEMERROR")
            return answer(fail(ErrCode.SYSTEMERROR), key)
        return Response(text.encode("utf-8"), media_type="text/csv; charset=utf-8")

    async def not_found(request: Request, _exc: Exception) -> Response:
        return return_fail(f"no such call {request.method} {request.url.path}")

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)
    return app
