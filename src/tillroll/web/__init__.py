"""The back office's web app: the intake of terminals' facts, e-receipt pages (and, next, the console)."""

from tillroll.web.app import create_app
from tillroll.web.config import WebConfig
from tillroll.web.server import WebServer

__all__ = ["WebConfig", "WebServer", "create_app"]
