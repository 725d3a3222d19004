-- The tenant a device belongs to, as migrations/postgres/0017_tenants.sql
-- (same rule as devices.yaml's). SQLite has no roles and no row-level
-- security: a SQLite file is readable whole by whoever can read it.
ALTER TABLE devices ADD COLUMN tenant TEXT
    CHECK (tenant IS NULL OR (length(tenant) BETWEEN 1 AND 63
                              AND substr(tenant, 1, 1) GLOB '[a-z0-9]'
                              AND tenant NOT GLOB '*[^a-z0-9_-]*'));
