"""The stack's first job: refuse to start while a secret still holds an example value, naming the variable.

``python -m infra.check_secrets`` reads every secret variable of :data:`infra.services.VARIABLES` from the
environment and exits 1 when one is missing or is a value published in this repository (``.env.example``'s
``change-me``, the local placeholder). docker-compose starts every other service after it succeeds
(``service_completed_successfully``): its interpolation can require a value but not compare one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from infra.services import VARIABLES
from reggaeton.settings import EXAMPLE_SECRETS

logger = logging.getLogger(__name__)


def refused(environ: Mapping[str, str]) -> list[str]:
    """Why each secret variable in ``environ`` cannot be used (empty when all are real secrets)."""
    problems = []
    for name, variable in VARIABLES.items():
        if not variable.secret:
            continue
        value = environ.get(name, "")
        if not value:
            problems.append(f"{name} is not set")
        elif value in EXAMPLE_SECRETS:
            problems.append(f"{name} is still the example value {value!r}: set a secret of your own")
    return problems


def main() -> int:
    """Exit 0 when every secret is real, else 1 after logging which ones are not."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    problems = refused(os.environ)
    for problem in problems:
        logger.error("refusing to start the stack: %s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
