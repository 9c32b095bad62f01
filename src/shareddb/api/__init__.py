"""The HTTP API: a main aiohttp app that mounts one sub-app per surface."""
