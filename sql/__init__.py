"""The worker's numbered migrations and the reference app schema, installed as the package
`listener.migrations` (pyproject.toml maps it onto this folder) so that `listener.migrate` reads
them through importlib.resources from a wheel as from a checkout. No code lives here."""
