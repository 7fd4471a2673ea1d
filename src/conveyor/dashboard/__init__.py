"""The web dashboard: ``conveyor dashboard APP``, or :func:`create_app` to serve it yourself.

Needs the ``dashboard`` extra (``pip install 'conveyor[dashboard]'``). See docs/dashboard.md.
"""

from .app import create_app
from .security import TOKEN_ENV, resolve_token
from .server import DashboardServer

__all__ = ["TOKEN_ENV", "DashboardServer", "create_app", "resolve_token"]
