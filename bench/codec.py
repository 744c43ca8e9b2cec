"""Benchmark: CPU cost of the host's per-message codec, one function at a time.

A typical signed 0200 sale (PIN, track 2) and the host's 0210 answer to it; prints one JSON
object of CPU µs per call (process time), each the best of `--repeat` timeit runs of `--number`
calls (the machine is shared: the best run is the one least disturbed).

    python bench/codec.py [--number 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from collections.abc import Callable

from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack_request

MAK = bytes.fromhex("C24A8FB57AA20123C24A8FB57AA20123")
SALE = Message(
    "0200",
    {
        "2": "6222021234567890123",
        "3": "000000",
        "4": "000000012345",
        "11": "000123",
        "14": "3012",
        "22": "021",
        "25": "00",
        "26": "12",
        "35": "6222021234567890123=3012101123456",
        "41": "12345678",
        "42": "123456789012345",
        "49": "156",
        "52": "2A084C604973D4AE",
        "53": "2600000000000000",
        "60": "22000001000",
    },
)
# Field order as the host builds it (RequestContext.respond, then response_for).
RESPONSE = Message(
    "0210",
    {
        "2": "6222021234567890123",
        "3": "000000",
        "4": "000000012345",
        "11": "000123",
        "25": "00",
        "41": "12345678",
        "42": "123456789012345",
        "49": "156",
        "60": "22000001000",
        "12": "142530",
        "13": "1203",
        "15": "1203",
        "37": "120314253001",
        "44": f"{'03080000':<11}{'00010000':<11}",
        "63": "CUPTILLROLL BANK",
        "38": "123456",
        "39": "00",
    },
)


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    # CPU time of this process, not wall time: on a shared machine, time spent descheduled
    # is not the codec's.
    runs = timeit.Timer(fn, timer=time.process_time).repeat(number=number, repeat=repeat)
    return round(min(runs) / number * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    raw = sign(SALE, MAK)
    assert mac_matches(raw, MAK) and unpack_request(raw).without("64").fields == SALE.fields
    frame = framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, raw)
    payload = frame.encode()[2:]
    assert framing.parse_payload(payload) == frame

    def run(fn: Callable[[], object]) -> float:
        return best_us(fn, args.number, args.repeat)

    print(
        json.dumps(
            {
                "unpack_request_0200_us": run(lambda: unpack_request(raw)),
                "sign_0210_us": run(lambda: sign(RESPONSE, MAK)),
                "pack_0210_us": run(lambda: pack(RESPONSE)),
                "mac_matches_us": run(lambda: mac_matches(raw, MAK)),
                "frame_encode_us": run(frame.encode),
                "frame_parse_us": run(lambda: framing.parse_payload(payload)),
            }
        )
    )


if __name__ == "__main__":
    main()
