"""Test and benchmark kit: the fake Twilio/Resend providers and `flavor-worker bench`.

Installed by the `bench` extra (and by `make test` / `make bench`), never imported by the
production packages (import-linter checks it): a dyno carries none of it.
"""
