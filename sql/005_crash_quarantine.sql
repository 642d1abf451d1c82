-- Events freed from a worker that died are "suspects": the crash may have been theirs, or they
-- may only have been claimed alongside the one that caused it. A suspect is handled alone (its
-- worker holds no other claim meanwhile), so a crash during that run is its own: only such
-- crashes can end in `failed`, and bystanders of a poison event lose nothing.
ALTER TABLE worker.events ADD COLUMN crashes integer NOT NULL DEFAULT 0;

COMMENT ON COLUMN worker.events.crashes IS
    'Times this event was freed from a worker that stopped while holding it (see 005).';

CREATE INDEX events_suspects_idx ON worker.events (id) WHERE status = 'pending' AND crashes > 0;
