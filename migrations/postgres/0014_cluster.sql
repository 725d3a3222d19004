-- Several instances sharing one fleet (`regpoll run --cluster`; src/cluster).
--
-- An instance joins by inserting a row here; its `session` (a number never
-- reused) is the epoch of everything it owns. It renews `lease_until` every
-- heartbeat. Any instance deletes the rows whose lease has expired on the
-- database's clock, and the delete cascades to what they owned: that is
-- the only way ownership passes from a dead instance to a live one, so an
-- owner whose row still exists can never have lost an endpoint.
CREATE TABLE IF NOT EXISTS cluster_instances (
    session       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   text NOT NULL UNIQUE CHECK (length(instance_id) BETWEEN 1 AND 200),
    -- Where its HTTP API listens, when it does (shown by /api/cluster).
    address       text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz NOT NULL,
    links_owned   integer NOT NULL DEFAULT 0,
    devices_owned integer NOT NULL DEFAULT 0,
    -- The registry's serial lines (transport: rtu) whose device path this
    -- instance's machine has: only those may own them.
    serial_lines  text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS cluster_instances_lease ON cluster_instances (lease_until);

-- Which session polls each link (host:port, or a serial line's path): all
-- the devices behind one link are polled by one instance, since gateways
-- and serial buses take few connections.
CREATE TABLE IF NOT EXISTS cluster_owners (
    link        text PRIMARY KEY,
    session     bigint NOT NULL REFERENCES cluster_instances (session) ON DELETE CASCADE,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cluster_owners_session ON cluster_owners (session);

-- How each link last changed hands: released on purpose (a join moved it,
-- or its owner stopped), with the releasing instance's clock when its last
-- poll had finished, so the next owner polls every firing after it and none
-- before, losing no reading to the handover; or freed because its owner's
-- lease expired (`released_at` null). Taken (deleted) by the next owner.
CREATE TABLE IF NOT EXISTS cluster_handoffs (
    link        text PRIMARY KEY,
    previous    text NOT NULL,
    released_at timestamptz,
    freed_at    timestamptz NOT NULL DEFAULT now()
);
