"""Write a new alembic revision from the difference between models.py and the migrations so far.

    python -m wmtp_studio.migrations -m "add run tags"

It upgrades a throw-away SQLite database to head, compares it with models.py and writes
migrations/versions/<rev>_<slug>.py; read and edit the result before committing it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from wmtp_studio import database, store


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m wmtp_studio.migrations", description=__doc__)
    parser.add_argument("-m", "--message", required=True, help="what the revision changes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = store.make_engine(f"sqlite:///{Path(tmp) / 'head.db'}")
        store.upgrade(engine=engine)
        cfg = Config()
        cfg.set_main_option("script_location", str(database.MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.revision(cfg, message=args.message, autogenerate=True)
        engine.dispose()


if __name__ == "__main__":
    main()
