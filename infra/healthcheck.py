"""Container healthcheck: exit 0 when an HTTP endpoint answers 2xx (stdlib only, no curl in the image).

Usage: ``python -m infra.healthcheck [URL]``; the URL defaults to ``$HEALTHCHECK_URL``, then the API's.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/health"


def healthy(url: str, timeout_s: float = 4.0) -> bool:
    """Whether ``url`` answers with a 2xx status within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when healthy, 1 otherwise."""
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else os.environ.get("HEALTHCHECK_URL", DEFAULT_URL)
    return 0 if healthy(url) else 1


if __name__ == "__main__":
    sys.exit(main())
