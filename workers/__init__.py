"""The queue, its tasks and the `wmtp-worker` daemon (the studio backend)."""
