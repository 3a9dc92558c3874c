"""``python -m telemetry_streamer``: serve the streamer with settings from the environment."""

from __future__ import annotations

import logging
import logging.config
import sys

from telemetry_kit import logging_config, run

from .app import create_app
from .settings import Settings
from .source import SourceError

log = logging.getLogger("telemetry_streamer")


def main() -> None:
    """Entry point; a CSV that cannot be replayed is one error line and exit status 2."""
    settings = Settings()  # required fields come from the environment
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    try:
        app = create_app(settings)
    except SourceError as e:
        # One clear line, no traceback: the file is the operator's to fix, and a restart
        # will not fix it.
        log.error("%s", e)
        sys.exit(2)
    run(app, settings)


if __name__ == "__main__":
    main()
