-- Per-device frame logging for commissioning (devices.yaml `log_frames`):
-- off (the default, and what every existing device keeps), header or
-- payload. The database refuses any other word, as devices.yaml's
-- validation and the registry loader do.
ALTER TABLE devices ADD COLUMN log_frames text NOT NULL DEFAULT 'off'
    CONSTRAINT devices_log_frames_known CHECK (log_frames IN ('off', 'header', 'payload'));

COMMENT ON COLUMN devices.log_frames IS
    'Log each request and answer: off, header (unit, function, addresses, outcome) or payload (also the words or bits)';
