"""The runtime: processes and their composition — the ``aiis`` CLI, ``aiis serve``, worker
processes, the supervisor, the embedded Redis, the autoscaler, Redis connections. The only part
that may import every other one."""
