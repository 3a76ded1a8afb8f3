"""Operations: readers and tools around the log — ``aiis ops`` (spend, alerts, task webhook
deliveries), the audit log, dead letters. Imports the core and admission, never the runtime."""
