-- The same columns and rules as migrations/postgres/0011_transports.sql.
-- SQLite checks a new column's own CHECK, but rules across columns need
-- triggers (as in 0009); the host trigger of 0009 is replaced by one that
-- lets a serial device (transport rtu) have no host. Rows already stored
-- are tcp devices, which the rules accept.
ALTER TABLE devices ADD COLUMN transport TEXT NOT NULL DEFAULT 'tcp'
    CHECK (transport IN ('tcp', 'rtu-over-tcp', 'rtu'));
ALTER TABLE devices ADD COLUMN serial_path TEXT CHECK (serial_path <> '');
ALTER TABLE devices ADD COLUMN baud INTEGER CHECK (baud BETWEEN 300 AND 4000000);
ALTER TABLE devices ADD COLUMN parity TEXT CHECK (parity IN ('none', 'even', 'odd'));
ALTER TABLE devices ADD COLUMN data_bits INTEGER CHECK (data_bits IN (7, 8));
ALTER TABLE devices ADD COLUMN stop_bits INTEGER CHECK (stop_bits IN (1, 2));
DROP TRIGGER device_checks_insert;
DROP TRIGGER device_checks_update;
CREATE TRIGGER device_checks_insert BEFORE INSERT ON devices
BEGIN
    SELECT CASE
        WHEN NEW.host = '' AND NEW.transport <> 'rtu'
            THEN RAISE(ABORT, 'devices: host is empty')
        WHEN (NEW.transport = 'rtu') <> (NEW.serial_path IS NOT NULL AND NEW.baud IS NOT NULL AND NEW.parity IS NOT NULL AND NEW.data_bits IS NOT NULL AND NEW.stop_bits IS NOT NULL)
          OR (NEW.transport <> 'rtu' AND coalesce(NEW.serial_path, NEW.baud, NEW.parity, NEW.data_bits, NEW.stop_bits) IS NOT NULL)
            THEN RAISE(ABORT, 'devices: serial_path, baud, parity, data_bits and stop_bits are required for transport rtu and only for it')
        WHEN NEW.transport <> 'tcp' AND NEW.unit_id NOT BETWEEN 1 AND 247
            THEN RAISE(ABORT, 'devices: unit_id must be 1..247 on the RTU transports (0 is broadcast)')
    END;
END;
CREATE TRIGGER device_checks_update BEFORE UPDATE OF host, unit_id, transport, serial_path, baud, parity, data_bits, stop_bits ON devices
BEGIN
    SELECT CASE
        WHEN NEW.host = '' AND NEW.transport <> 'rtu'
            THEN RAISE(ABORT, 'devices: host is empty')
        WHEN (NEW.transport = 'rtu') <> (NEW.serial_path IS NOT NULL AND NEW.baud IS NOT NULL AND NEW.parity IS NOT NULL AND NEW.data_bits IS NOT NULL AND NEW.stop_bits IS NOT NULL)
          OR (NEW.transport <> 'rtu' AND coalesce(NEW.serial_path, NEW.baud, NEW.parity, NEW.data_bits, NEW.stop_bits) IS NOT NULL)
            THEN RAISE(ABORT, 'devices: serial_path, baud, parity, data_bits and stop_bits are required for transport rtu and only for it')
        WHEN NEW.transport <> 'tcp' AND NEW.unit_id NOT BETWEEN 1 AND 247
            THEN RAISE(ABORT, 'devices: unit_id must be 1..247 on the RTU transports (0 is broadcast)')
    END;
END;
