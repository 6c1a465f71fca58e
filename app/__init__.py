"""The HTTP service: settings, database, storage, auth, routes, dashboard. Never imports torch or taming/."""
