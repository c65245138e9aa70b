"""The queue's consumer, its tasks, the supervisor and the `wmtp-worker` daemon (the studio backend). This folder
is installed as `wmtp_studio.workers`; the rest of the library never imports it (submitters enqueue through
wmtp_studio/taskqueue.py)."""
