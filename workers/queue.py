"""The Huey instance the `wmtp-worker` daemon consumes (the environment's `WMTP_QUEUE_URL`); its tasks are in
tasks.py, the producers' side (`announce`) in wmtp_studio/taskqueue.py."""

from __future__ import annotations

from wmtp_studio.settings import Settings
from wmtp_studio.taskqueue import make_huey

huey = make_huey(Settings.from_env().queue_url)
