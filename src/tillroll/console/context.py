"""What every console route needs — the store, the clock, the settings, the templates — held
on the app (``app.state.console``) and given to routes by ``Depends(console_context)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment

from tillroll.clock import Clock
from tillroll.console.config import ConsoleConfig
from tillroll.console.i18n import lang_of, tr
from tillroll.host.store import HostStore


@dataclass
class ConsoleContext:
    store: HostStore
    clock: Clock
    console: ConsoleConfig
    base_url: str
    templates: Environment
    extras: dict[str, Any] = field(default_factory=dict)  # what other parts attach (a live terminal ...)

    def render(self, request: Request, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
        """A console page in the request's language; the layout gets the logged-in user, if any."""
        lang = lang_of(request)
        principal = getattr(request.state, "principal", None)

        def t(key: str, **kw: object) -> str:
            return tr(lang, key, **kw)

        page = self.templates.get_template(template).render(
            request=request, lang=lang, t=t, principal=principal, path=request.url.path, **values
        )
        return HTMLResponse(page, status_code=status)


def console_context(request: Request) -> ConsoleContext:
    ctx: ConsoleContext = request.app.state.console
    return ctx


# A route's parameter ``ctx: Ctx`` is the console's context.
Ctx = Annotated[ConsoleContext, Depends(console_context)]
