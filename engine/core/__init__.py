"""The core: one task's life as events on Redis Streams — its events and their mapper, the keys,
the store and its Lua scripts (the only door to Redis), the client's submit/get/cancel/watch,
the worker and its outbox, retry. It imports nothing of admission, operations or runtime; what
it needs of them is a protocol in ``engine.core.ports`` (docs/architecture.md)."""
