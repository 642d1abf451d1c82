"""What every floor shares: settings, logging and redaction, database connections, the
named-query loader, metrics and backoff. It imports none of `listener`, `handlers` or
`scheduler` (import-linter checks it)."""
