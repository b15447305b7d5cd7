"""The live web dashboard (`ecology dashboard`, `ecology run --dashboard`).

A client of the world server's gRPC API only (it never opens the database): one
Admin.WatchEventBatches stream, a GetStats poll every second and ListAgents (every second
while a page shows the agents list, else every 5 s) feed an in-memory
`Feed`; pages are server-rendered HTML and update themselves from server-sent events
(`/stream`). See server/dashboard/app.py and the README section "Dashboard"."""

from server.dashboard.app import Feed, build_app, is_loopback, serve  # noqa: F401
