-- Tell running regpoll services when the registry changes, whether by
-- `regpoll devices sync` or by hand-written SQL, so they reload within a
-- moment instead of waiting for their periodic check. One notification per
-- statement (not per row); PostgreSQL also folds identical notifications of
-- one transaction into one.
CREATE FUNCTION regpoll_registry_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('regpoll_registry', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION regpoll_registry_changed();

CREATE TRIGGER device_register_map_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_register_map
    FOR EACH STATEMENT EXECUTE FUNCTION regpoll_registry_changed();
