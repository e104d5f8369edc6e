"""Container healthchecks, stdlib only (no curl in the image), cheap enough to run every few seconds.

Usage: ``python -m infra.healthcheck [URL]``: exit 0 when the URL (default ``$HEALTHCHECK_URL``, then the
API's) answers 2xx; ``python -m infra.healthcheck --alive FILE``: exit 0 while the deadline a process
renews in FILE has not passed (``reggaeton.heartbeat``; the watchdog, which serves no HTTP).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8000/health"
ALIVE = "--alive"


def healthy(url: str, timeout_s: float = 4.0) -> bool:
    """Whether ``url`` (plain HTTP) answers with a 2xx status within ``timeout_s``.

    One GET over a socket, reading only the status line: ``urllib.request`` alone took 60 ms of CPU to
    import, six times the rest of the check, and the checks of a stack run every few seconds.
    """
    try:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            return False
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            request = f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
            connection.sendall(request.encode("ascii"))
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = connection.recv(1024)
                if not chunk:
                    break
                head += chunk
    except (OSError, ValueError, UnicodeError):
        return False
    version, code = ([*head.split(b"\r\n", 1)[0].split(), b"", b""])[:2]
    return version.startswith(b"HTTP/") and len(code) == 3 and code.isdigit() and code.startswith(b"2")


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when healthy, 1 otherwise."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == [ALIVE]:
        if len(args) != 2:
            sys.stderr.write(f"usage: python -m infra.healthcheck {ALIVE} FILE\n")
            return 2
        # Here, not at the top: the balancer's image holds this file alone (the HTTP form, stdlib only).
        from reggaeton import heartbeat

        return 0 if heartbeat.alive(Path(args[1])) else 1
    url = args[0] if args else os.environ.get("HEALTHCHECK_URL", DEFAULT_URL)
    return 0 if healthy(url) else 1


if __name__ == "__main__":
    sys.exit(main())
