-- Types f16, bcd16, bcd32, u8 and i8, and the `byte` (high or low) a u8 or
-- i8 reads; strings may now swap words (CDAB, DCBA: the words of each pair
-- of registers). The rules of 0009 are replaced by the same rules over the
-- new types, as devices.yaml's validation and the registry loader
-- (src/registry/shape.rs) apply them.
--
-- No stored row can break them, so unlike 0009 there is nothing to name
-- before adding them: 0009's constraints hold every row to the old types,
-- and the new rules only widen what those types may do (a string may swap
-- words), while `byte` is new and NULL, which is what every old type needs.
-- Should a row break them anyway (0009's constraints dropped by hand),
-- PostgreSQL refuses the constraint by name, the migration stops, and
-- nothing is rewritten.
ALTER TABLE device_register_map ADD COLUMN byte text;

ALTER TABLE device_register_map
    DROP CONSTRAINT register_data_type_known,
    DROP CONSTRAINT register_word_order_fits_type,
    DROP CONSTRAINT register_fits_address_space,
    ADD CONSTRAINT register_data_type_known
        CHECK (data_type IN ('bool', 'u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'u64', 'i64',
                             'f16', 'f32', 'f64', 'bcd16', 'bcd32', 'string')),
    ADD CONSTRAINT register_word_order_fits_type
        CHECK ((word_order NOT IN ('ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA') OR data_type IN ('u64', 'i64', 'f64'))
           AND (word_order NOT IN ('CDAB', 'DCBA')
                OR data_type IN ('u32', 'i32', 'f32', 'bcd32', 'u64', 'i64', 'f64', 'string'))
           AND (word_order = 'ABCD' OR data_type NOT IN ('u8', 'i8'))),
    ADD CONSTRAINT register_fits_address_space
        CHECK (address + CASE WHEN data_type = 'string' THEN coalesce(length, 1)
                              WHEN data_type IN ('u32', 'i32', 'f32', 'bcd32') THEN 2
                              WHEN data_type IN ('u64', 'i64', 'f64') THEN 4 ELSE 1 END <= 65536),
    ADD CONSTRAINT register_byte_known
        CHECK (byte IN ('high', 'low')),
    ADD CONSTRAINT register_byte_only_on_bytes
        CHECK ((byte IS NOT NULL) = (data_type IN ('u8', 'i8')));

COMMENT ON COLUMN device_register_map.byte IS
    'For data_type u8 and i8 (and only for them): high (bits 15..8, first on the wire) or low (bits 7..0)';
