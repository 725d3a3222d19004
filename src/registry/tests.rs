use super::*;

#[test]
fn decimal_scales_give_the_nearest_double_of_the_decimal() {
    let mut reg = Register::plain(
        "r",
        RegisterKind::Holding,
        0,
        DataType::U16,
        WordOrder::Abcd,
    );
    for (scale, raw, want) in [
        (0.01, 330.0, 3.3),
        (0.1, -48.0, -4.8),
        (0.001, 1234.0, 1.234),
    ] {
        reg.scale = scale;
        assert_eq!(reg.engineering(raw), want, "{raw} × {scale}");
    }
    reg.scale = 2.5;
    reg.offset = -1.0;
    assert_eq!(reg.engineering(4.0), 9.0);
    reg.scale = 1.0;
    reg.offset = 0.0;
    assert_eq!(reg.engineering(65535.0), 65535.0);
}

#[test]
fn durations_parse_with_units_and_reject_zero_or_garbage() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("0s").unwrap_err().contains("at least 1ms"));
    assert!(parse_duration("5").unwrap_err().contains("no unit"));
    assert!(
        parse_duration("fast")
            .unwrap_err()
            .contains("not a duration")
    );
    assert!(
        parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit")
    );
}

#[test]
fn durations_format_back_to_yaml_form() {
    for s in ["500ms", "5s", "2m", "1h", "1500ms"] {
        assert_eq!(format_duration(parse_duration(s).unwrap()), s);
    }
}

#[test]
fn orders_parse_in_32_and_64_bit_names() {
    assert_eq!(WordOrder::parse("GHEFCDAB"), Ok((WordOrder::Cdab, true)));
    assert_eq!(WordOrder::Cdab.name_for(DataType::F64), "GHEFCDAB");
    assert_eq!(WordOrder::Cdab.name_for(DataType::F32), "CDAB");
    assert!(
        WordOrder::parse("ACBD")
            .unwrap_err()
            .contains("valid orders")
    );
    assert!(
        "f128"
            .parse::<DataType>()
            .unwrap_err()
            .contains("unknown type")
    );
}

#[test]
fn every_type_reads_back_from_its_name() {
    for name in DataType::VALID.split(", ") {
        let t: DataType = name.parse().unwrap();
        assert_eq!(t.as_str(), name);
    }
    assert_eq!("high".parse::<Byte>(), Ok(Byte::High));
    assert!("middle".parse::<Byte>().unwrap_err().contains("high, low"));
}

/// Every register of a register map is held while its devices are polled,
/// and every register of the fleet at once while the registry loads (before
/// devices share maps): 96 bytes, the deadband's pointer paid for by the
/// valid range's NaN bounds.
#[test]
fn a_register_stays_small() {
    assert!(std::mem::size_of::<Register>() <= 96);
}
