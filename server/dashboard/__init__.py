"""The live web dashboard (`ecology dashboard`, `ecology run --dashboard`).

A client of the world server's gRPC API only (it never opens the database): one
Admin.WatchEvents stream and a GetStats/ListAgents poll every second feed an in-memory
`Feed`; pages are server-rendered HTML and update themselves from server-sent events
(`/stream`). See server/dashboard/app.py and the README section "Dashboard"."""

from server.dashboard.app import Feed, build_app, is_loopback, serve  # noqa: F401
