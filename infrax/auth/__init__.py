"""Who may call what: bearer tokens with Taskcluster-style scopes, on every component's API."""

from infrax.auth.scopes import ADMIN, SERVICE_SCOPES, covers, satisfied
from infrax.auth.tokens import Caller, TokenError, TokenStore
from infrax.auth.web import Guard, Security, caller_of, require, route_options, secured_app

__all__ = [
    "ADMIN",
    "SERVICE_SCOPES",
    "Caller",
    "Guard",
    "Security",
    "TokenError",
    "TokenStore",
    "caller_of",
    "covers",
    "require",
    "route_options",
    "satisfied",
    "secured_app",
]
