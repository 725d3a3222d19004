use super::*;

const ALL: [Setting; 51] = [
    LOG,
    DATABASE_URL,
    DATABASE_SSLMODE,
    DATABASE_SSLROOTCERT,
    DATABASE_SSLCERT,
    DATABASE_SSLKEY,
    SQLITE_PATH,
    REDIS_URL,
    REDIS_CA,
    REDIS_CERT,
    REDIS_KEY,
    REDIS_PREFIX,
    REDIS_TTL,
    REDIS_TIMEOUT,
    REDIS_LINGER,
    BATCH_ROWS,
    BATCH_DELAY,
    SPOOL_AFTER,
    HISTORY_MEMORY_MAX,
    SPOOL_MAX,
    HISTORY_STALLED_AFTER,
    DATA_DIR,
    HISTORY_RETRY_MAX,
    DATABASE_RETRY_MAX,
    RETENTION,
    RETENTION_1M,
    RETENTION_1H,
    ROLLUP_INTERVAL,
    JOBS_CHECK_INTERVAL,
    DB_HEALTH_TIMEOUT,
    DEVICES,
    RELOAD_INTERVAL,
    SHUTDOWN_TIMEOUT,
    HTTP,
    HTTP_TOKEN_FILE,
    HTTP_TOKENS,
    HTTP_METRICS_OPEN,
    HTTP_INSECURE,
    HTTP_TLS_CERT,
    HTTP_TLS_KEY,
    API_CONCURRENCY,
    API_WAIT,
    API_TIMEOUT,
    API_DB_CONNECTIONS,
    API_MAX_RESPONSE,
    API_MAX_DEVICES,
    CLUSTER,
    INSTANCE_ID,
    CLUSTER_LEASE,
    CLUSTER_HEARTBEAT,
    CLUSTER_FENCE_MARGIN,
];

#[test]
fn every_default_parses_as_its_setting_reads_it() {
    for d in [
        REDIS_TIMEOUT,
        REDIS_LINGER,
        BATCH_DELAY,
        HISTORY_RETRY_MAX,
        DATABASE_RETRY_MAX,
        RELOAD_INTERVAL,
        SHUTDOWN_TIMEOUT,
        API_WAIT,
        API_TIMEOUT,
        HISTORY_STALLED_AFTER,
        JOBS_CHECK_INTERVAL,
        DB_HEALTH_TIMEOUT,
        ROLLUP_INTERVAL,
        CLUSTER_LEASE,
        CLUSTER_HEARTBEAT,
        CLUSTER_FENCE_MARGIN,
    ] {
        assert!(d.default_duration() > Duration::ZERO, "--{}", d.flag);
    }
    for c in [
        BATCH_ROWS,
        SPOOL_AFTER,
        HISTORY_MEMORY_MAX,
        API_CONCURRENCY,
        API_DB_CONNECTIONS,
        API_MAX_DEVICES,
    ] {
        assert!(c.default_count() > 0, "--{}", c.flag);
    }
    for r in [RETENTION, RETENTION_1H] {
        assert!(crate::history::retention::parse_retention(r.default_text()).is_ok());
    }
    assert!(
        crate::history::retention::parse_rollup_retention_arg(RETENTION_1M.default_text()).is_ok()
    );
    assert!(crate::api::limits::parse_bytes(API_MAX_RESPONSE.default_text()).unwrap() > 0);
}

#[test]
fn every_setting_has_its_own_flag_and_variable() {
    let mut flags: Vec<&str> = ALL.iter().map(|s| s.flag).collect();
    let mut envs: Vec<&str> = ALL.iter().map(|s| s.env).collect();
    flags.sort();
    flags.dedup();
    envs.sort();
    envs.dedup();
    assert_eq!(flags.len(), ALL.len());
    assert_eq!(envs.len(), ALL.len());
    assert!(envs.iter().all(|e| e.starts_with("REGPOLL_")), "{envs:?}");
}

#[test]
fn help_lines_end_without_a_period_as_clap_shows_them() {
    for s in ALL {
        assert!(!s.help.ends_with('.'), "--{}", s.flag);
    }
}

#[test]
fn sizes_are_bytes_or_a_number_with_a_unit() {
    assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
    assert_eq!(parse_bytes("500MB"), Ok(500 << 20));
    assert_eq!(parse_bytes("2 GB"), Ok(2 << 30));
    assert_eq!(parse_bytes("64k"), Ok(64 << 10));
    for bad in ["", "0", "MB", "1.5GB", "-1", "12XB", "99999999999999TB"] {
        let e = parse_bytes(bad).unwrap_err();
        assert!(e.contains("e.g. 2GB"), "{bad}: {e}");
    }
}

/// deploy/regpoll.env.example, which the systemd unit points operators at,
/// lists every setting.
#[test]
fn the_example_environment_file_lists_every_setting() {
    let example = include_str!("../../deploy/regpoll.env.example");
    for s in ALL {
        // Commented out at its default, or set (the database and Redis).
        assert!(
            example.lines().any(|l| l
                .trim_start_matches('#')
                .starts_with(&format!("{}=", s.env))),
            "deploy/regpoll.env.example does not list {}",
            s.env
        );
    }
}
