-- How a device is reached (issue 22): `transport` is tcp (Modbus TCP, the
-- default and what every existing row is), rtu-over-tcp (RTU frames over a
-- TCP socket to host:port) or rtu (a serial line: the serial_* columns, and
-- host and port unused). The rules are devices.yaml's, as the registry
-- loader (src/registry/store.rs) applies them: the line's settings only and
-- always on an rtu device, unit ids 1..247 on the RTU transports (0 is
-- broadcast, which no device answers), a host unless on a serial line.
--
-- Every stored row is a tcp device with no serial columns, which these
-- rules accept, so there is nothing to name before adding them (as in 0010).
ALTER TABLE devices
    ADD COLUMN transport text NOT NULL DEFAULT 'tcp',
    ADD COLUMN serial_path text,
    ADD COLUMN baud integer,
    ADD COLUMN parity text,
    ADD COLUMN data_bits integer,
    ADD COLUMN stop_bits integer;

ALTER TABLE devices
    DROP CONSTRAINT devices_host_not_empty,
    ADD CONSTRAINT devices_transport_known
        CHECK (transport IN ('tcp', 'rtu-over-tcp', 'rtu')),
    ADD CONSTRAINT devices_host_not_empty
        CHECK (host <> '' OR transport = 'rtu'),
    ADD CONSTRAINT devices_serial_only_on_rtu
        CHECK ((transport = 'rtu') = (serial_path IS NOT NULL AND baud IS NOT NULL AND parity IS NOT NULL
                                      AND data_bits IS NOT NULL AND stop_bits IS NOT NULL)
           AND (transport = 'rtu' OR (serial_path IS NULL AND baud IS NULL AND parity IS NULL
                                      AND data_bits IS NULL AND stop_bits IS NULL))),
    ADD CONSTRAINT devices_serial_path_not_empty CHECK (serial_path <> ''),
    ADD CONSTRAINT devices_baud_in_range CHECK (baud BETWEEN 300 AND 4000000),
    ADD CONSTRAINT devices_parity_known CHECK (parity IN ('none', 'even', 'odd')),
    ADD CONSTRAINT devices_data_bits_known CHECK (data_bits IN (7, 8)),
    ADD CONSTRAINT devices_stop_bits_known CHECK (stop_bits IN (1, 2)),
    ADD CONSTRAINT devices_rtu_unit_id
        CHECK (transport = 'tcp' OR unit_id BETWEEN 1 AND 247);

COMMENT ON COLUMN devices.transport IS
    'tcp (Modbus TCP to host:port), rtu-over-tcp (RTU frames over TCP to host:port) or rtu (serial line serial_path; host and port unused)';
COMMENT ON COLUMN devices.serial_path IS
    'For transport rtu (and only for it): the serial device, e.g. /dev/ttyUSB0; devices on one path share the bus and its settings';
