-- Tenants (devices.yaml `tenant`): a device may belong to a tenant, and a
-- database role of that tenant sees only its own devices, registers,
-- readings, quarantined rows and rollups (row-level security).
--
-- Which roles belong to which tenant is kept by the administrator in
-- `tenant_roles`, not by a setting a session chooses (`SET x = …` is open
-- to every session, so it would isolate nothing). A role sees the rows of
-- every tenant mapped to a role whose privileges it uses (itself, or a
-- group role it inherits from: pg_has_role's USAGE, so a CREATEROLE
-- administrator who was given the role without inheriting it is not made
-- a tenant by that). A role mapped to no tenant sees everything, as every
-- role did before: regpoll, analysts, Grafana. The owner of the tables
-- (regpoll, which migrates them) is not subject to the policies at all, so
-- its writer keeps writing every row.
ALTER TABLE devices
    ADD COLUMN tenant text,
    ADD CONSTRAINT device_tenant_name
        CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,62}$');

COMMENT ON COLUMN devices.tenant IS
    'The tenant the device belongs to (devices.yaml `tenant`); NULL: none';

CREATE TABLE tenant_roles (
    role_name text NOT NULL,
    tenant    text NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    PRIMARY KEY (role_name, tenant)
);

COMMENT ON TABLE tenant_roles IS
    'Database roles (and group roles) whose members see only these tenants'' rows; kept by the administrator';

-- Every role may read its own rows of the map, which the policies below
-- need (they run with the privileges of whoever queries), and no other:
-- one tenant does not learn the others' names or roles from it. A role
-- that does not exist (dropped, or not created yet) matches nobody;
-- pg_has_role would raise an error on its name, so it is given the oid
-- of a role that exists.
GRANT SELECT ON tenant_roles TO PUBLIC;
ALTER TABLE tenant_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_roles_own ON tenant_roles FOR SELECT
    USING (EXISTS (SELECT 1 FROM pg_roles r
                   WHERE r.rolname = role_name
                     AND pg_has_role(current_user, r.oid, 'USAGE')));

-- The tenants the current role belongs to: none for a role mapped to no
-- tenant, which then sees everything. The policies ask it twice, each an
-- uncorrelated subquery run once per statement, never per row.
CREATE FUNCTION regpoll_tenants() RETURNS SETOF text
    LANGUAGE sql STABLE
    AS $$
        SELECT DISTINCT t.tenant
        FROM tenant_roles t
        JOIN pg_roles r ON r.rolname = t.role_name
        WHERE pg_has_role(current_user, r.oid, 'USAGE')
    $$;

-- The ids of the devices, and of the registers, of the current role's
-- tenants. Plain SQL, so the planner inlines them into the policies below:
-- `id IN (SELECT …)` is then built once per statement (a hashed SubPlan)
-- and each row costs one hash probe.
CREATE FUNCTION regpoll_tenant_devices() RETURNS SETOF integer
    LANGUAGE sql STABLE
    AS $$ SELECT d.id FROM devices d WHERE d.tenant IN (SELECT * FROM regpoll_tenants()) $$;

CREATE FUNCTION regpoll_tenant_registers() RETURNS SETOF integer
    LANGUAGE sql STABLE
    AS $$ SELECT m.id FROM device_register_map m
          WHERE m.device_id IN (SELECT * FROM regpoll_tenant_devices()) $$;

-- One policy per table, the same for every command: a tenant role may only
-- read anyway (README), and for a role that may write, the rows it may
-- write are the rows it may see. `devices` is keyed by its tenant; the
-- other tables by the device or register they belong to, so no tenant
-- column is repeated on them. `NOT EXISTS (…)` is an InitPlan, true for a
-- role of no tenant, which then sees every row.
DO $$
DECLARE
    t record;
    timescale boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
BEGIN
    FOR t IN
        SELECT * FROM (VALUES
            ('devices', 'tenant IN (SELECT * FROM regpoll_tenants())', false),
            ('device_register_map', 'device_id IN (SELECT * FROM regpoll_tenant_devices())', false),
            ('register_readings_rejected', 'device_id IN (SELECT * FROM regpoll_tenant_devices())', false),
            -- TimescaleDB: see register_readings_tenant below.
            ('register_readings', 'device_id IN (SELECT * FROM regpoll_tenant_devices())', true),
            -- The rollup tables regpoll keeps on plain PostgreSQL (0015).
            ('register_readings_1m', 'register_id IN (SELECT * FROM regpoll_tenant_registers())', true),
            ('register_readings_hourly', 'register_id IN (SELECT * FROM regpoll_tenant_registers())', true)
        ) AS p(tbl, mine, plain_only)
    LOOP
        CONTINUE WHEN t.plain_only AND timescale;
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t.tbl);
        EXECUTE format(
            'CREATE POLICY tenant_rows ON %I USING (NOT EXISTS (SELECT FROM regpoll_tenants()) OR %s)',
            t.tbl, t.mine);
    END LOOP;

    -- A plain view runs with its owner's rights, and the owner is exempt
    -- from the policies: the analysts' view would show every tenant's
    -- readings. PostgreSQL 15 lets it run with the querying role's rights;
    -- on 14 it stays as it was, and a tenant role must not be granted it.
    IF current_setting('server_version_num')::int >= 150000 THEN
        ALTER VIEW register_readings_named SET (security_invoker = true);
    END IF;

    -- TimescaleDB: row-level security cannot be enabled on a hypertable
    -- with compression (0006 turns it on), is not carried to its chunks (a
    -- role granted the hypertable can read a chunk directly), and is not
    -- supported on continuous aggregates. A tenant role is given this view
    -- instead, which filters as the policies do; the hypertable, its
    -- chunks, the named view and the aggregates are not granted to it.
    IF timescale THEN
        CREATE VIEW register_readings_tenant WITH (security_barrier) AS
        SELECT r.*
        FROM register_readings r
        WHERE NOT EXISTS (SELECT FROM regpoll_tenants())
           OR r.device_id IN (SELECT * FROM regpoll_tenant_devices());
    END IF;
END
$$;
