"""The flavor-worker daemon: settings, logging, database access, event stream, claim loop, CLI."""
