-- The same rules as migrations/postgres/0010_more_types.sql: the triggers of
-- 0009 are replaced by ones that know the types f16, bcd16, bcd32, u8 and i8,
-- the new `byte` column (high or low, for u8 and i8 only) and strings that
-- swap words. As in 0009, rows already stored are checked by the registry
-- loader, never rewritten.
ALTER TABLE device_register_map ADD COLUMN byte TEXT;
DROP TRIGGER register_checks_insert;
DROP TRIGGER register_checks_update;
CREATE TRIGGER register_checks_insert BEFORE INSERT ON device_register_map
BEGIN
    SELECT CASE
        WHEN NEW.data_type NOT IN ('bool', 'u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'u64', 'i64', 'f16', 'f32', 'f64', 'bcd16', 'bcd32', 'string')
            THEN RAISE(ABORT, 'device_register_map: unknown data_type (valid: bool, u8, i8, u16, i16, u32, i32, u64, i64, f16, f32, f64, bcd16, bcd32, string)')
        WHEN NEW.word_order NOT IN ('ABCD', 'CDAB', 'BADC', 'DCBA', 'ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA')
            THEN RAISE(ABORT, 'device_register_map: unknown word_order (valid: ABCD, CDAB, BADC, DCBA; 64-bit: ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA)')
        WHEN NEW.word_order IN ('ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA') AND NEW.data_type NOT IN ('u64', 'i64', 'f64')
            THEN RAISE(ABORT, 'device_register_map: a 64-bit word_order needs a 64-bit data_type')
        WHEN NEW.word_order IN ('CDAB', 'DCBA') AND NEW.data_type NOT IN ('u32', 'i32', 'f32', 'bcd32', 'u64', 'i64', 'f64', 'string')
            THEN RAISE(ABORT, 'device_register_map: word_order CDAB or DCBA swaps words; this data_type has one word')
        WHEN NEW.word_order <> 'ABCD' AND NEW.data_type IN ('u8', 'i8')
            THEN RAISE(ABORT, 'device_register_map: u8 and i8 take word_order ABCD; their byte is chosen with byte')
        WHEN NEW.byte IS NOT NULL AND NEW.byte NOT IN ('high', 'low')
            THEN RAISE(ABORT, 'device_register_map: unknown byte (valid: high, low)')
        WHEN (NEW.byte IS NOT NULL) <> (NEW.data_type IN ('u8', 'i8'))
            THEN RAISE(ABORT, 'device_register_map: byte (high or low) is required for data_type u8 and i8 and only for them')
        WHEN NEW.kind IN ('coil', 'discrete') AND NEW.data_type <> 'bool'
            THEN RAISE(ABORT, 'device_register_map: coil and discrete registers must have data_type bool')
        WHEN NEW.bit IS NOT NULL AND NOT (NEW.data_type = 'bool' AND NEW.kind IN ('holding', 'input'))
            THEN RAISE(ABORT, 'device_register_map: bit is only for data_type bool on a holding or input register')
        WHEN NEW.data_type = 'bool' AND NEW.kind IN ('holding', 'input') AND NEW.bit IS NULL
            THEN RAISE(ABORT, 'device_register_map: data_type bool on a 16-bit register needs a bit')
        WHEN (NEW.data_type = 'string') <> (NEW.length IS NOT NULL)
            THEN RAISE(ABORT, 'device_register_map: length is required for data_type string and only for it')
        WHEN NEW.address + CASE WHEN NEW.data_type = 'string' THEN coalesce(NEW.length, 1) WHEN NEW.data_type IN ('u32', 'i32', 'f32', 'bcd32') THEN 2 WHEN NEW.data_type IN ('u64', 'i64', 'f64') THEN 4 ELSE 1 END > 65536
            THEN RAISE(ABORT, 'device_register_map: the value runs past address 65535')
        WHEN NOT (NEW.scale > -9e999 AND NEW.scale < 9e999 AND NEW.scale <> 0)
            THEN RAISE(ABORT, 'device_register_map: scale must be a finite, non-zero number')
        WHEN NOT (NEW."offset" > -9e999 AND NEW."offset" < 9e999)
            THEN RAISE(ABORT, 'device_register_map: offset must be a finite number')
        WHEN NEW.valid_min > NEW.valid_max
            THEN RAISE(ABORT, 'device_register_map: valid_min is above valid_max')
    END;
END;
CREATE TRIGGER register_checks_update BEFORE UPDATE OF kind, address, data_type, word_order, scale, "offset", valid_min, valid_max, bit, byte, length ON device_register_map
BEGIN
    SELECT CASE
        WHEN NEW.data_type NOT IN ('bool', 'u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'u64', 'i64', 'f16', 'f32', 'f64', 'bcd16', 'bcd32', 'string')
            THEN RAISE(ABORT, 'device_register_map: unknown data_type (valid: bool, u8, i8, u16, i16, u32, i32, u64, i64, f16, f32, f64, bcd16, bcd32, string)')
        WHEN NEW.word_order NOT IN ('ABCD', 'CDAB', 'BADC', 'DCBA', 'ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA')
            THEN RAISE(ABORT, 'device_register_map: unknown word_order (valid: ABCD, CDAB, BADC, DCBA; 64-bit: ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA)')
        WHEN NEW.word_order IN ('ABCDEFGH', 'GHEFCDAB', 'BADCFEHG', 'HGFEDCBA') AND NEW.data_type NOT IN ('u64', 'i64', 'f64')
            THEN RAISE(ABORT, 'device_register_map: a 64-bit word_order needs a 64-bit data_type')
        WHEN NEW.word_order IN ('CDAB', 'DCBA') AND NEW.data_type NOT IN ('u32', 'i32', 'f32', 'bcd32', 'u64', 'i64', 'f64', 'string')
            THEN RAISE(ABORT, 'device_register_map: word_order CDAB or DCBA swaps words; this data_type has one word')
        WHEN NEW.word_order <> 'ABCD' AND NEW.data_type IN ('u8', 'i8')
            THEN RAISE(ABORT, 'device_register_map: u8 and i8 take word_order ABCD; their byte is chosen with byte')
        WHEN NEW.byte IS NOT NULL AND NEW.byte NOT IN ('high', 'low')
            THEN RAISE(ABORT, 'device_register_map: unknown byte (valid: high, low)')
        WHEN (NEW.byte IS NOT NULL) <> (NEW.data_type IN ('u8', 'i8'))
            THEN RAISE(ABORT, 'device_register_map: byte (high or low) is required for data_type u8 and i8 and only for them')
        WHEN NEW.kind IN ('coil', 'discrete') AND NEW.data_type <> 'bool'
            THEN RAISE(ABORT, 'device_register_map: coil and discrete registers must have data_type bool')
        WHEN NEW.bit IS NOT NULL AND NOT (NEW.data_type = 'bool' AND NEW.kind IN ('holding', 'input'))
            THEN RAISE(ABORT, 'device_register_map: bit is only for data_type bool on a holding or input register')
        WHEN NEW.data_type = 'bool' AND NEW.kind IN ('holding', 'input') AND NEW.bit IS NULL
            THEN RAISE(ABORT, 'device_register_map: data_type bool on a 16-bit register needs a bit')
        WHEN (NEW.data_type = 'string') <> (NEW.length IS NOT NULL)
            THEN RAISE(ABORT, 'device_register_map: length is required for data_type string and only for it')
        WHEN NEW.address + CASE WHEN NEW.data_type = 'string' THEN coalesce(NEW.length, 1) WHEN NEW.data_type IN ('u32', 'i32', 'f32', 'bcd32') THEN 2 WHEN NEW.data_type IN ('u64', 'i64', 'f64') THEN 4 ELSE 1 END > 65536
            THEN RAISE(ABORT, 'device_register_map: the value runs past address 65535')
        WHEN NOT (NEW.scale > -9e999 AND NEW.scale < 9e999 AND NEW.scale <> 0)
            THEN RAISE(ABORT, 'device_register_map: scale must be a finite, non-zero number')
        WHEN NOT (NEW."offset" > -9e999 AND NEW."offset" < 9e999)
            THEN RAISE(ABORT, 'device_register_map: offset must be a finite number')
        WHEN NEW.valid_min > NEW.valid_max
            THEN RAISE(ABORT, 'device_register_map: valid_min is above valid_max')
    END;
END;
