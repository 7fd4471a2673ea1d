"""Broker URLs as operators should see them: no password, and SQLite files by absolute path."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_PARAMS = frozenset({"password", "passwd", "pass"})


def display_url(url: str) -> str:
    """``url`` safe to print: the password (in the user part or a ``password=`` query
    parameter) replaced by ``***``; a relative ``sqlite:///file.db`` made absolute
    (``sqlite:////cwd/file.db``), since it depends on the working directory."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        return f"sqlite:///{Path(path).resolve()}" if path else url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret_param = any(k.lower() in _SECRET_PARAMS for k, _ in query)
    if parts.password is None and not secret_param:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    masked = [(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in query]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(masked, safe="*")))
