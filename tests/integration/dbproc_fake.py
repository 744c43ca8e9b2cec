"""A database process with a pipeline that does no database work, for the link's tests:
`python dbproc_fake.py LINK_FD MODE`. MODE "approve" answers every request 00 (echoing its
field 11); "hang" never answers (the test kills it with a group in flight)."""

from __future__ import annotations

import sys
import threading

from tillroll.host.boundary import Answer, GroupRequest
from tillroll.host.db_process import serve_db_process
from tillroll.iso8583.messages import Message


class _Sales:
    @staticmethod
    def summary() -> str:
        return "no sale lane"


class FakePipeline:
    sales = _Sales()

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def answer(self, group: list[GroupRequest]) -> dict[int, Answer]:
        if self.mode == "hang":
            threading.Event().wait()
        return {r.index: Answer(Message("0210", {"11": r.msg["11"], "39": "00"}), None) for r in group}


if __name__ == "__main__":
    serve_db_process(FakePipeline(sys.argv[2]), int(sys.argv[1]))
