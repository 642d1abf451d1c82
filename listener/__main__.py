"""`python -m listener` is the same as the `flavor-worker` console script."""

from listener.cli import main

main()
