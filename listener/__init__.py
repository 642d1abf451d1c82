"""The flavor-worker daemon: event stream, claim loop, CLI, HTTP surface, migrations, demo.

The top floor: it may import `handlers`, `scheduler` and `core`; nothing imports it.
"""
