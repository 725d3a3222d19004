//! Tenants against real servers: devices of `acme`, of `globex` and one of
//! no tenant, polled by `regpoll run`. A database role of each tenant sees
//! only its own rows (row-level security, migration 0017), a role mapped to
//! no tenant sees everything, and regpoll keeps writing; a Redis ACL user
//! of each tenant reads its own latest values and is refused the others';
//! a device moved to another tenant leaves no keys behind.

mod common;

use std::time::Duration;

use regpoll::app::{self, DeviceSource, Settings};
use regpoll::db::Db;
use sqlx::{Executor as _, PgPool};

const FLEET: &str = r#"
defaults:
  host: 127.0.0.1
  every: 200ms
  timeout: 500ms
devices:
  - name: acme-boiler
    tenant: acme
    port: {A}
    registers:
      - { name: t, kind: holding, address: 0, type: f32 }
      - { name: p, kind: input, address: 0 }
  - name: globex-pump
    tenant: globex
    port: {B}
    registers:
      - { name: t, kind: holding, address: 0, type: f32 }
  - name: shared-meter
    port: {C}
    registers:
      - { name: e, kind: input, address: 0, type: u32 }
"#;

/// A name for a role or ACL user that no other test or run uses (roles
/// belong to the whole server, not to the test's database).
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}_{}_{nanos}", std::process::id())
}

/// `regpoll run` of the fixture's devices file (kept in the directory
/// returned, which must live as long as the run).
async fn run(
    fixture: &common::SimFixture,
    settings: Settings,
) -> (app::Running, tempfile::TempDir) {
    let (dir, path) = common::write_yaml(&fixture.yaml);
    let settings = Settings {
        devices_file: Some(path),
        sqlite_path: dir.path().join("t.db"),
        ..settings
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    (running, dir)
}

/// The database's URL for `role` (trust authentication on the test server).
fn url_as(database_url: &str, role: &str) -> String {
    let mut url = url::Url::parse(database_url).unwrap();
    url.set_username(role).unwrap();
    url.to_string()
}

async fn names(pool: &PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every table and view a tenant's analyst is given.
const TENANT_TABLES: &str = "devices, device_register_map, register_readings, register_readings_named, \
     register_readings_rejected, register_readings_1m, register_readings_hourly";

/// What one role sees of each table, as device names (rollups by their
/// register's device, looked up as the owner, who sees every row).
async fn seen_by(owner: &PgPool, role_url: &str) -> Vec<(&'static str, Vec<String>)> {
    let pool = PgPool::connect(role_url).await.unwrap();
    let by_id = |ids: Vec<i32>| async move {
        let mut out: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT d.name FROM devices d WHERE d.id = ANY($1) ORDER BY 1",
        )
        .bind(ids)
        .fetch_all(owner)
        .await
        .unwrap();
        out.dedup();
        out
    };
    let ids = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(sql)
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    let rollup_devices = |table: &'static str| {
        let pool = pool.clone();
        async move {
            let registers: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT DISTINCT register_id FROM {table}"
            )))
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
            sqlx::query_scalar::<_, i32>(
                "SELECT DISTINCT device_id FROM device_register_map WHERE id = ANY($1)",
            )
            .bind(registers)
            .fetch_all(owner)
            .await
            .unwrap()
        }
    };
    let seen = vec![
        (
            "devices",
            names(&pool, "SELECT name FROM devices ORDER BY name").await,
        ),
        (
            "device_register_map",
            by_id(ids("SELECT DISTINCT device_id FROM device_register_map").await).await,
        ),
        (
            "register_readings",
            by_id(ids("SELECT DISTINCT device_id FROM register_readings").await).await,
        ),
        (
            "register_readings_named",
            names(
                &pool,
                "SELECT DISTINCT device FROM register_readings_named ORDER BY 1",
            )
            .await,
        ),
        (
            "register_readings_rejected",
            by_id(ids("SELECT DISTINCT device_id FROM register_readings_rejected").await).await,
        ),
        (
            "register_readings_1m",
            by_id(rollup_devices("register_readings_1m").await).await,
        ),
        (
            "register_readings_hourly",
            by_id(rollup_devices("register_readings_hourly").await).await,
        ),
    ];
    pool.close().await;
    seen
}

fn only(devices: &[&str]) -> Vec<(&'static str, Vec<String>)> {
    TENANT_TABLES
        .split(", ")
        .map(|t| {
            let t: &'static str = Box::leak(t.to_string().into_boxed_str());
            (t, devices.iter().map(|d| d.to_string()).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_database_role_and_redis_user_see_only_its_devices() {
    let fixture = common::simulate(FLEET, &["{A}", "{B}", "{C}"]).await;
    let database_url = common::fresh_postgres().await;
    let (redis_url, prefix) = common::redis();
    let (running, _dir) = run(
        &fixture,
        Settings {
            database_url: Some(database_url.clone()),
            redis_url: Some(redis_url.clone()),
            redis_prefix: prefix.clone(),
            ..Settings::default()
        },
    )
    .await;
    common::wait_for_polls(&running, 3).await;
    let owner = PgPool::connect(&database_url).await.unwrap();

    // Rows of every device in the quarantine and the rollups, written as
    // the owner (regpoll's writer and refresh job are the owner too).
    owner
        .execute(
            "INSERT INTO register_readings_rejected (ts, register_id, device_id, quality, error) \
             SELECT now(), id, device_id, 'good', 'test' FROM device_register_map;
             INSERT INTO register_readings_1m (register_id, bucket, avg, min, max, count, last) \
             SELECT id, date_trunc('minute', now()) - interval '1 day', 1, 1, 1, 1, 1 FROM device_register_map;
             INSERT INTO register_readings_hourly (register_id, bucket, avg, min, max, count, last) \
             SELECT id, date_trunc('hour', now()) - interval '1 day', 1, 1, 1, 1, 1 FROM device_register_map;",
        )
        .await
        .unwrap();

    // A login role for acme; for globex a group role its analyst is in; an
    // analyst mapped to no tenant; and a mapping of a role that does not
    // exist, which must not break anyone's queries.
    let acme = unique("acme");
    let globex_group = unique("globex_group");
    let globex = unique("globex");
    let analyst = unique("analyst");
    let ghost = unique("ghost");
    let setup = format!(
        "CREATE ROLE {acme} LOGIN;
         CREATE ROLE {globex_group} NOLOGIN;
         CREATE ROLE {globex} LOGIN IN ROLE {globex_group};
         CREATE ROLE {analyst} LOGIN;
         GRANT SELECT ON {TENANT_TABLES} TO {acme}, {globex_group}, {analyst};
         INSERT INTO tenant_roles (role_name, tenant) VALUES
             ('{acme}', 'acme'), ('{globex_group}', 'globex'), ('{ghost}', 'globex');"
    );
    owner
        .execute(sqlx::AssertSqlSafe(setup.clone()))
        .await
        .unwrap();
    let readings_before: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(&owner)
        .await
        .unwrap();

    let acme_sees = seen_by(&owner, &url_as(&database_url, &acme)).await;
    assert_eq!(acme_sees, only(&["acme-boiler"]));
    let globex_sees = seen_by(&owner, &url_as(&database_url, &globex)).await;
    assert_eq!(globex_sees, only(&["globex-pump"]));
    let analyst_sees = seen_by(&owner, &url_as(&database_url, &analyst)).await;
    assert_eq!(
        analyst_sees,
        only(&["acme-boiler", "globex-pump", "shared-meter"]),
        "a role mapped to no tenant sees every row"
    );

    // The map shows a role its own entries only: no tenant learns the
    // others' names or roles from it.
    let acme_pool = PgPool::connect(&url_as(&database_url, &acme))
        .await
        .unwrap();
    let mapped: Vec<(String, String)> =
        sqlx::query_as("SELECT role_name, tenant FROM tenant_roles")
            .fetch_all(&acme_pool)
            .await
            .unwrap();
    assert_eq!(mapped, [(acme.clone(), "acme".to_string())]);
    // A tenant role granted SELECT only cannot write or change the map.
    for sql in [
        "INSERT INTO tenant_roles VALUES ('x', 'globex')".to_string(),
        format!("DELETE FROM tenant_roles WHERE role_name = '{acme}'"),
        "UPDATE devices SET tenant = 'acme'".to_string(),
    ] {
        let e = acme_pool
            .execute(sqlx::AssertSqlSafe(sql.clone()))
            .await
            .expect_err(&sql);
        assert!(e.to_string().contains("permission denied"), "{sql}: {e}");
    }
    // The policy costs a tenant's query one hash probe per row: the
    // tenant's device ids are gathered once (a hashed SubPlan), the role's
    // tenants once (InitPlans), never a lookup per row.
    let plan_of = |pool: PgPool| async move {
        let lines: Vec<String> = sqlx::query_scalar(
            "EXPLAIN (COSTS OFF) SELECT count(*) FROM register_readings WHERE ts > now() - interval '1 hour'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        lines.join("\n")
    };
    let plan = plan_of(acme_pool.clone()).await;
    eprintln!("a tenant's plan:\n{plan}");
    assert!(plan.contains("hashed SubPlan"), "{plan}");
    assert!(!plan.contains("Nested Loop"), "{plan}");
    let owner_plan = plan_of(owner.clone()).await;
    eprintln!("the owner's plan:\n{owner_plan}");
    assert!(
        !owner_plan.contains("SubPlan"),
        "the owner is not subject to the policies: {owner_plan}"
    );
    // Nor read another tenant's row by asking for it.
    let by_name: Option<i32> =
        sqlx::query_scalar("SELECT id FROM devices WHERE name = 'globex-pump'")
            .fetch_optional(&acme_pool)
            .await
            .unwrap();
    assert_eq!(by_name, None);
    acme_pool.close().await;

    // regpoll (the owner) keeps writing every device's readings.
    common::wait_for_polls(&running, 6).await;
    let writer = Db::postgres(&database_url).await.unwrap();
    let Db::Postgres(writer_pool) = &writer else {
        unreachable!()
    };
    let readings_after: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(writer_pool)
        .await
        .unwrap();
    assert!(
        readings_after > readings_before,
        "{readings_before} -> {readings_after}"
    );
    writer.close().await;

    redis_users_see_only_their_tenants_keys(&redis_url, &prefix).await;

    running.shutdown().await.unwrap();
    let teardown = format!(
        "DROP OWNED BY {acme}, {globex}, {globex_group}, {analyst};
         DROP ROLE {acme}, {globex}, {globex_group}, {analyst};"
    );
    owner.execute(sqlx::AssertSqlSafe(teardown)).await.unwrap();
    owner.close().await;
}

/// Keys of a tenant's device carry the tenant; an ACL user whose patterns
/// name one tenant reads that tenant's latest values and state and is
/// refused the other's and the untenanted device's.
async fn redis_users_see_only_their_tenants_keys(redis_url: &str, prefix: &str) {
    let admin = redis::Client::open(redis_url).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    for (key, exists) in [
        (format!("{prefix}:acme:latest:acme-boiler"), true),
        (format!("{prefix}:acme:device:acme-boiler"), true),
        (format!("{prefix}:globex:latest:globex-pump"), true),
        (format!("{prefix}:latest:shared-meter"), true),
        (format!("{prefix}:latest:acme-boiler"), false),
        (format!("{prefix}:device:globex-pump"), false),
    ] {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(n == 1, exists, "{key}");
    }

    let mut users = Vec::new();
    for tenant in ["acme", "globex"] {
        let user = unique(tenant);
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(">secret-for-test")
            .arg("resetkeys")
            .arg(format!("~{prefix}:{tenant}:*"))
            .arg("resetchannels")
            .arg(format!("&{prefix}:{tenant}:*"))
            .arg("-@all")
            .arg("+@read")
            .arg("+subscribe")
            .arg("+ping")
            .query_async(&mut admin)
            .await
            .unwrap();
        users.push((tenant, user));
    }
    let (_, acme) = &users[0];
    let mut url = url::Url::parse(redis_url).unwrap();
    url.set_username(acme).unwrap();
    url.set_password(Some("secret-for-test")).unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let values: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:acme:latest:acme-boiler"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(values.len(), 2, "{values:?}");
    for key in [
        format!("{prefix}:globex:latest:globex-pump"),
        format!("{prefix}:globex:device:globex-pump"),
        format!("{prefix}:latest:shared-meter"),
    ] {
        let e = redis::cmd("HGETALL")
            .arg(&key)
            .query_async::<redis::Value>(&mut conn)
            .await
            .expect_err(&key);
        assert!(
            e.to_string().to_lowercase().contains("noperm"),
            "{key}: {e}"
        );
    }
    // The update channels: acme's allowed, globex's refused.
    for (channel, allowed) in [
        (format!("{prefix}:acme:updates:acme-boiler"), true),
        (format!("{prefix}:globex:updates:globex-pump"), false),
        (format!("{prefix}:updates:shared-meter"), false),
    ] {
        let answer: redis::RedisResult<String> = redis::cmd("ACL")
            .arg("DRYRUN")
            .arg(acme)
            .arg("SUBSCRIBE")
            .arg(&channel)
            .query_async(&mut admin)
            .await;
        let answer = answer.unwrap_or_else(|e| e.to_string());
        assert_eq!(answer == "OK", allowed, "{channel}: {answer}");
    }
    for (_, user) in users {
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_moved_to_another_tenant_leaves_no_keys_behind() {
    let fixture = common::simulate(FLEET, &["{A}", "{B}", "{C}"]).await;
    let (redis_url, prefix) = common::redis();
    let (dir, path) = common::write_yaml(&fixture.yaml);
    let settings = Settings {
        sqlite_path: dir.path().join("t.db"),
        devices_file: Some(path.clone()),
        redis_url: Some(redis_url.clone()),
        redis_prefix: prefix.clone(),
        reload_interval: Duration::from_millis(200),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    common::wait_for_polls(&running, 2).await;
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let exists = |key: String| {
        let mut conn = conn.clone();
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 1
        }
    };
    assert!(exists(format!("{prefix}:acme:latest:acme-boiler")).await);

    // acme's boiler goes to globex, and the meter gets a tenant.
    let moved = fixture
        .yaml
        .replace("tenant: acme", "tenant: globex")
        .replace(
            "  - name: shared-meter\n",
            "  - name: shared-meter\n    tenant: acme\n",
        );
    std::fs::write(&path, moved).unwrap();
    let gone_and_moved = || async {
        !exists(format!("{prefix}:acme:latest:acme-boiler")).await
            && !exists(format!("{prefix}:acme:device:acme-boiler")).await
            && !exists(format!("{prefix}:latest:shared-meter")).await
            && !exists(format!("{prefix}:device:shared-meter")).await
            && exists(format!("{prefix}:globex:latest:acme-boiler")).await
            && exists(format!("{prefix}:acme:latest:shared-meter")).await
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut updates = running.latest.subscribe();
    while !gone_and_moved().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old keys stayed or the new ones did not come within 10 s"
        );
        // A poll is the next moment anything can change.
        updates.changed().await.unwrap();
    }
    running.shutdown().await.unwrap();
    drop(dir);
}

#[test]
fn the_registry_commands_show_each_devices_tenant() {
    let (dir, _) = common::write_yaml(
        "devices:\n  - { name: acme-boiler, host: 127.0.0.1, tenant: acme, registers: [ { name: t, kind: holding, address: 0 } ] }\n  - { name: shared-meter, host: 127.0.0.1, registers: [ { name: t, kind: holding, address: 0 } ] }\n",
    );
    let out = common::regpoll(&["devices", "sync", "devices.yaml"], dir.path());
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let out = common::regpoll(&["devices", "list"], dir.path());
    let list = common::text(&out.stdout);
    let column = |name: &str| {
        let header = list.lines().next().unwrap();
        let at = header.find("TENANT").expect("a TENANT column");
        let line = list.lines().find(|l| l.starts_with(name)).unwrap();
        line[at..].split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(column("acme-boiler"), "acme", "{list}");
    assert_eq!(column("shared-meter"), "-", "{list}");
    let out = common::regpoll(&["devices", "show", "acme-boiler"], dir.path());
    let first = common::text(&out.stdout);
    assert!(
        first.lines().next().unwrap().ends_with(", tenant acme"),
        "{first}"
    );
}

/// The databases refuse, as devices.yaml does, a tenant that could escape
/// a Redis key pattern or a role name, whoever writes it.
#[tokio::test]
async fn the_databases_refuse_a_tenant_name_devices_yaml_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::sqlite(&dir.path().join("t.db")).await.unwrap();
    let postgres = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    let devices = regpoll::config::parse(
        "devices:\n  - { name: d, host: 127.0.0.1, tenant: acme, registers: [ { name: t, kind: holding, address: 0 } ] }\n",
        "devices.yaml",
    )
    .unwrap();
    for db in [&sqlite, &postgres] {
        db.sync_devices(&devices).await.unwrap();
        for bad in ["acme:*", "Acme", "-acme", "", &"a".repeat(64), "a b"] {
            let refused = match db {
                Db::Postgres(p) => sqlx::query("UPDATE devices SET tenant = $1")
                    .bind(bad)
                    .execute(p)
                    .await
                    .is_err(),
                Db::Sqlite(p) => sqlx::query("UPDATE devices SET tenant = $1")
                    .bind(bad)
                    .execute(p)
                    .await
                    .is_err(),
            };
            assert!(refused, "{} took tenant {bad:?}", db.kind());
        }
        let loaded = db.load_devices().await.unwrap();
        assert_eq!(loaded.devices[0].tenant_name(), Some("acme"));
    }
    sqlite.close().await;
    postgres.close().await;
}

/// The tenants' tokens, through the real token check of `regpoll run`'s
/// API: each tenant's token lists and reads only its devices, another
/// tenant's device is the 404 of a device that does not exist, fleet-wide
/// endpoints do not exist for it, and a token without a tenant sees all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenants_token_sees_only_its_devices_through_the_api() {
    const ACME: &str = "acme-token-0123456789";
    const GLOBEX: &str = "globex-token-0123456789";
    const OPS: &str = "ops-token-0123456789ab";
    let fixture = common::simulate(FLEET, &["{A}", "{B}", "{C}"]).await;
    let mut settings = Settings {
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::default()
    };
    settings.http_access.tokens.env = Some(format!(
        "acme-viewer {ACME} acme; globex-viewer {GLOBEX} globex; ops {OPS}"
    ));
    let (running, _dir) = run(&fixture, settings).await;
    common::wait_for_polls(&running, 3).await;
    let api = running.http_addr().unwrap();

    let names = |answer: &common::HttpAnswer| -> Vec<String> {
        let mut names: Vec<String> = answer.json()["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    for (token, mine, theirs) in [
        (ACME, "acme-boiler", "globex-pump"),
        (GLOBEX, "globex-pump", "acme-boiler"),
    ] {
        let listed = common::http_get_as(api, "/api/devices", Some(token)).await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        assert_eq!(names(&listed), [mine]);
        let own = format!("/api/devices/{mine}/latest");
        assert_eq!(
            common::http_get_as(api, &own, Some(token)).await.status,
            200
        );
        for other in [theirs, "shared-meter"] {
            let answer =
                common::http_get_as(api, &format!("/api/devices/{other}/latest"), Some(token))
                    .await;
            let unknown =
                common::http_get_as(api, "/api/devices/no-such-device/latest", Some(token)).await;
            assert_eq!(
                (answer.status, unknown.status),
                (404, 404),
                "{}",
                answer.body
            );
            assert_eq!(
                answer.body.replace(other, "no-such-device"),
                unknown.body,
                "another tenant's device answers as one that does not exist"
            );
            let readings =
                common::http_get_as(api, &format!("/api/readings?device={other}"), Some(token))
                    .await;
            assert_eq!(readings.status, 404, "{}", readings.body);
        }
        let latest = common::http_get_as(
            api,
            &format!("/api/latest?devices={mine},{theirs}"),
            Some(token),
        )
        .await;
        assert_eq!(latest.status, 200, "{}", latest.body);
        let latest = latest.json();
        assert!(latest["devices"][mine].is_object(), "{latest}");
        assert!(latest["devices"].get(theirs).is_none(), "{latest}");
        assert_eq!(latest["unknown"], serde_json::json!([theirs]));
        for fleet_wide in ["/metrics", "/api/database", "/api/stats"] {
            let answer = common::http_get_as(api, fleet_wide, Some(token)).await;
            assert_eq!(answer.status, 404, "{fleet_wide}: {}", answer.body);
        }
    }
    let all = common::http_get_as(api, "/api/devices", Some(OPS)).await;
    assert_eq!(
        names(&all),
        ["acme-boiler", "globex-pump", "shared-meter"],
        "a token without a tenant sees every device"
    );
    assert_eq!(
        common::http_get_as(api, "/metrics", Some(OPS)).await.status,
        200
    );
    assert_eq!(
        common::http_get_as(api, "/api/devices", None).await.status,
        401
    );
    running.shutdown().await.unwrap();
}
