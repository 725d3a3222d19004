-- register_readings_rejected: rows the database refused (a value it cannot
-- hold, a constraint or trigger that refuses the row), kept with the error
-- instead of blocking every later batch. Nothing here may refuse them again:
-- no primary key (the same row can be refused twice, e.g. replayed from the
-- spool), no foreign keys, no checks beyond NOT NULL on what regpoll always
-- sets. Rows are few; no index beyond what analysts add.
CREATE TABLE register_readings_rejected (
    ts          timestamptz NOT NULL,
    register_id integer NOT NULL,
    device_id   integer NOT NULL,
    value       double precision,
    value_text  text,
    quality     text NOT NULL,
    detail      text,
    error       text NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
