"""Admission: what a task passes before it is written (budgets, templates, sanitising, the PII
policy and its vault, callback-URL checks, the deployment's live limits) and what its result
passes before it is committed (the result cache, cleaning). Imports only the core."""
