-- Per-device request limits and retry settings, and the register shapes that
-- need more than a type: `bit` (bool fields of a 16-bit register) and `length`
-- (strings, in registers). Defaults match devices.yaml's defaults.
ALTER TABLE devices ADD COLUMN connect_timeout_ms INTEGER NOT NULL DEFAULT 1000 CHECK (connect_timeout_ms > 0);
ALTER TABLE devices ADD COLUMN retries INTEGER NOT NULL DEFAULT 1 CHECK (retries BETWEEN 0 AND 10);
ALTER TABLE devices ADD COLUMN pause_ms INTEGER NOT NULL DEFAULT 0 CHECK (pause_ms >= 0);
ALTER TABLE devices ADD COLUMN max_registers_per_request INTEGER NOT NULL DEFAULT 125 CHECK (max_registers_per_request BETWEEN 1 AND 125);
ALTER TABLE devices ADD COLUMN max_bits_per_request INTEGER NOT NULL DEFAULT 2000 CHECK (max_bits_per_request BETWEEN 1 AND 2000);
ALTER TABLE devices ADD COLUMN max_gap INTEGER NOT NULL DEFAULT 10 CHECK (max_gap BETWEEN 0 AND 2000);
ALTER TABLE device_register_map ADD COLUMN bit INTEGER CHECK (bit BETWEEN 0 AND 15);
ALTER TABLE device_register_map ADD COLUMN length INTEGER CHECK (length BETWEEN 1 AND 125);
