-- The database refuses the registry rows regpoll cannot use, with the same
-- rules as devices.yaml's validation and the registry loader
-- (src/registry/store.rs, check_shape): known types and word orders, orders
-- that fit the type, bits and lengths only where they mean something, values
-- that fit the address space, finite scale and offset, an ordered valid
-- range. Rows that break a rule already are named and the migration stops:
-- nothing is rewritten.
DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(format('device %s register %s: %s', d.name, m.name, m.problem), '; '
                      ORDER BY d.name, m.name)
    INTO bad
    FROM (
        SELECT device_id, name, CASE
            WHEN data_type NOT IN ('bool', 'u16', 'i16', 'u32', 'i32', 'u64', 'i64', 'f32', 'f64', 'string')
                THEN format('unknown data_type %L (valid: bool, u16, i16, u32, i32, u64, i64, f32, f64, string)', data_type)
            WHEN word_order NOT IN ('ABCD', 'CDAB', 'BADC', 'DCBA', 'ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA')
                THEN format('unknown word_order %L', word_order)
            WHEN word_order IN ('ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA') AND data_type NOT IN ('u64', 'i64', 'f64')
                THEN format('word_order %s is for 64-bit types, not %s', word_order, data_type)
            WHEN word_order IN ('CDAB', 'DCBA') AND data_type NOT IN ('u32', 'i32', 'f32', 'u64', 'i64', 'f64')
                THEN format('word_order %s swaps words, but %s has one word', word_order, data_type)
            WHEN kind IN ('coil', 'discrete') AND data_type <> 'bool'
                THEN format('%s registers must have data_type bool', kind)
            WHEN bit IS NOT NULL AND NOT (data_type = 'bool' AND kind IN ('holding', 'input'))
                THEN 'bit is only for data_type bool on a holding or input register'
            WHEN data_type = 'bool' AND kind IN ('holding', 'input') AND bit IS NULL
                THEN 'data_type bool on a 16-bit register needs a bit'
            WHEN (data_type = 'string') <> (length IS NOT NULL)
                THEN 'length is required for data_type string and only for it'
            WHEN address + CASE WHEN data_type = 'string' THEN coalesce(length, 1)
                                WHEN data_type IN ('u32', 'i32', 'f32') THEN 2
                                WHEN data_type IN ('u64', 'i64', 'f64') THEN 4 ELSE 1 END > 65536
                THEN format('address %s runs past 65535', address)
            WHEN NOT (scale > '-Infinity' AND scale < 'Infinity' AND scale <> 0)
                THEN format('scale %s is not a finite, non-zero number', scale)
            WHEN NOT ("offset" > '-Infinity' AND "offset" < 'Infinity')
                THEN format('offset %s is not a finite number', "offset")
            WHEN valid_min > valid_max
                THEN format('valid_min %s is above valid_max %s', valid_min, valid_max)
        END AS problem
        FROM device_register_map
    ) m
    JOIN devices d ON d.id = m.device_id
    WHERE m.problem IS NOT NULL;
    SELECT concat_ws('; ', bad, string_agg(format('device %s: host is empty', name), '; ' ORDER BY name))
    INTO bad
    FROM devices WHERE host = '';
    IF bad <> '' THEN
        -- The fix is in the message itself: sqlx shows no HINT.
        RAISE EXCEPTION 'regpoll cannot use these registry rows: %. Fix or delete them (regpoll devices sync devices.yaml rewrites the devices of the file), then run regpoll migrate again; nothing was changed', bad;
    END IF;
END
$$;

ALTER TABLE devices ADD CONSTRAINT devices_host_not_empty CHECK (host <> '');

ALTER TABLE device_register_map
    ADD CONSTRAINT register_data_type_known
        CHECK (data_type IN ('bool', 'u16', 'i16', 'u32', 'i32', 'u64', 'i64', 'f32', 'f64', 'string')),
    ADD CONSTRAINT register_word_order_known
        CHECK (word_order IN ('ABCD', 'CDAB', 'BADC', 'DCBA', 'ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA')),
    ADD CONSTRAINT register_word_order_fits_type
        CHECK ((word_order NOT IN ('ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA') OR data_type IN ('u64', 'i64', 'f64'))
           AND (word_order NOT IN ('CDAB', 'DCBA') OR data_type IN ('u32', 'i32', 'f32', 'u64', 'i64', 'f64'))),
    ADD CONSTRAINT register_bit_kinds_are_bool
        CHECK (kind IN ('holding', 'input') OR data_type = 'bool'),
    ADD CONSTRAINT register_bit_only_on_bool_words
        CHECK (bit IS NULL OR (data_type = 'bool' AND kind IN ('holding', 'input'))),
    ADD CONSTRAINT register_bool_word_needs_bit
        CHECK (NOT (data_type = 'bool' AND kind IN ('holding', 'input') AND bit IS NULL)),
    ADD CONSTRAINT register_length_only_for_string
        CHECK ((data_type = 'string') = (length IS NOT NULL)),
    ADD CONSTRAINT register_fits_address_space
        CHECK (address + CASE WHEN data_type = 'string' THEN coalesce(length, 1)
                              WHEN data_type IN ('u32', 'i32', 'f32') THEN 2
                              WHEN data_type IN ('u64', 'i64', 'f64') THEN 4 ELSE 1 END <= 65536),
    ADD CONSTRAINT register_scale_finite_nonzero
        CHECK (scale > '-Infinity' AND scale < 'Infinity' AND scale <> 0),
    ADD CONSTRAINT register_offset_finite
        CHECK ("offset" > '-Infinity' AND "offset" < 'Infinity'),
    ADD CONSTRAINT register_valid_range_ordered
        CHECK (valid_min IS NULL OR valid_max IS NULL OR valid_min <= valid_max);
