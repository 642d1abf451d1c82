"""`flavor-worker bench`: the whole path from a committed row to a provider request, measured."""
