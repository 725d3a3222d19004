//! What regpoll needs of PostgreSQL: migrations run as an ordinary role that
//! owns its database, and a database migrated by an earlier release, whose
//! migration was since edited in place, still opens.

mod common;

use regpoll::db::Db;
use sqlx::Executor as _;

fn admin() -> String {
    std::env::var("TEST_DATABASE_URL").expect(
        "TEST_DATABASE_URL is not set: run the integration tests with scripts/test, which starts PostgreSQL",
    )
}

#[tokio::test]
async fn migrations_run_as_an_ordinary_role_that_owns_its_database() {
    let admin = admin();
    let name = format!("regpoll_owner_{}", std::process::id());
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    pool.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .await
    .unwrap();
    pool.execute(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {name}")))
        .await
        .unwrap();
    pool.execute(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
    )))
    .await
    .unwrap();
    pool.execute(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} OWNER {name}"
    )))
    .await
    .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    url.set_username(&name).unwrap();

    let db = Db::postgres(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("migrating as {name} failed: {e:#}"));
    let devices = regpoll::config::parse(
        "devices:\n  - name: boiler\n    host: 127.0.0.1\n    registers:\n      - { name: t, kind: holding, address: 0, type: f32 }\n",
        "devices.yaml",
    )
    .unwrap();
    db.sync_devices(&devices).await.unwrap();
    assert_eq!(db.load_active_devices().await.unwrap().devices.len(), 1);
    // Opening it again (every start does) changes nothing.
    db.close().await;
    Db::postgres(url.as_str()).await.unwrap().close().await;

    pool.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .await
    .unwrap();
    pool.execute(sqlx::AssertSqlSafe(format!("DROP ROLE {name}")))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_migrated_before_migration_2_was_edited_still_opens() {
    let url = common::fresh_postgres().await;
    Db::postgres(&url).await.unwrap().close().await;
    // What the release before the edit recorded for migration 2.
    let old = "dc28f150074af0c5b593fae8e5bf2ab4e85f7a80bdc93155574b7772b1abc00ae8c0d90036a93e57e94be3bfa5cb7002";
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = decode($1, 'hex') WHERE version = 2")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();

    Db::postgres(&url)
        .await
        .unwrap_or_else(|e| panic!("a database of the earlier release is refused: {e:#}"))
        .close()
        .await;
    let now: String = sqlx::query_scalar(
        "SELECT encode(checksum, 'hex') FROM _sqlx_migrations WHERE version = 2",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_ne!(now, old, "the stored checksum is the current one");

    // Any other change of an applied migration is still refused.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = decode('00', 'hex') WHERE version = 2")
        .execute(&pool)
        .await
        .unwrap();
    let e = Db::postgres(&url).await.unwrap_err();
    assert!(format!("{e:#}").contains("migrations failed"), "{e:#}");
}
