"""The four views. Each module is pure: a shard class, ``load`` and ``evolve``; no I/O."""
