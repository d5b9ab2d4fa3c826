//! The Prisma models shipped for the admin application (`migrations/prisma/schema.prisma`)
//! are valid Prisma, and describe exactly the tables the SQL migrations create: every
//! table, column, type, nullability, default, primary key, unique key, index and foreign
//! key, with the same constraint names, so Prisma sees no drift.
//!
//! The schema is read by Prisma's own engine (`@prisma/prisma-schema-wasm`, through
//! `tests/prisma/dmmf.mjs`); `scripts/test` installs the pinned package and sets
//! `MEMSHIFT_NODE_MODULES`. Without node or the package these tests fail, saying how
//! to install them; they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use memshift::testing::postgres::TestDatabase;
use serde_json::Value;
use sqlx::{Connection, PgConnection, Row};

const SCHEMA: &str = "migrations/prisma/schema.prisma";
const SCRIPT: &str = "tests/prisma/dmmf.mjs";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `node tests/prisma/dmmf.mjs SCHEMA`, panicking when node or the package is missing.
fn run_dmmf(schema: &Path) -> Output {
    let output = Command::new("node")
        .arg(repo().join(SCRIPT))
        .arg(schema)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `node` ({e}): these tests need Node.js 18 or later on PATH \
                 (e.g. `apt-get install nodejs npm`), then run them with `scripts/test`, \
                 which installs @prisma/prisma-schema-wasm and sets MEMSHIFT_NODE_MODULES"
            )
        });
    if output.status.code() == Some(3) {
        panic!(
            "{SCRIPT} could not load @prisma/prisma-schema-wasm; run the tests with \
             `scripts/test`, which installs the pinned version:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// The description of a schema that Prisma accepts.
fn describe(schema: &Path) -> Value {
    let output = run_dmmf(schema);
    assert!(
        output.status.success(),
        "{SCRIPT} {} failed ({}):\n{}",
        schema.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{SCRIPT} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A copy of the shipped schema with `from` replaced by `to` (once; it must occur).
fn broken_copy(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join(SCHEMA)).unwrap();
    assert!(text.contains(from), "{SCHEMA} no longer contains {from:?}");
    let path = dir.join("schema.prisma");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

/// One table as the database sees it, from either side.
#[derive(Debug, Default, PartialEq)]
struct Table {
    /// column -> (type as `format_type` prints it, nullable, default expression)
    columns: BTreeMap<String, (String, bool, Option<String>)>,
    /// Primary key, unique keys, indexes and foreign keys, each as one line with its name.
    constraints: BTreeSet<String>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

fn key_line(kind: &str, name: &str, columns: &[String]) -> String {
    format!("{kind} {name} ({})", columns.join(", "))
}

fn fk_line(
    name: &str,
    columns: &[String],
    table: &str,
    references: &[String],
    on_delete: &str,
    on_update: &str,
) -> String {
    format!(
        "foreign key {name} ({}) references {table} ({}) on delete {on_delete} on update {on_update}",
        columns.join(", "),
        references.join(", ")
    )
}

/// The PostgreSQL type Prisma gives a column, as `format_type(atttypid, atttypmod)` prints it.
fn prisma_type(column: &Value) -> String {
    if let Some(unsupported) = column["unsupported"].as_str() {
        return unsupported.to_string();
    }
    let args: Vec<String> = column["nativeType"]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let with_args = |base: &str, default: &str| match args.as_slice() {
        [] if default.is_empty() => base.to_string(),
        [] => format!("{base}({default})"),
        args => format!("{base}({})", args.join(",")),
    };
    let base = match column["nativeType"]["name"].as_str() {
        Some("Uuid") => "uuid".to_string(),
        Some("Text") => "text".to_string(),
        Some("JsonB") => "jsonb".to_string(),
        Some("Json") => "json".to_string(),
        Some("DoublePrecision") => "double precision".to_string(),
        Some("Real") => "real".to_string(),
        Some("SmallInt") => "smallint".to_string(),
        Some("Integer") => "integer".to_string(),
        Some("BigInt") => "bigint".to_string(),
        Some("Boolean") => "boolean".to_string(),
        Some("Date") => "date".to_string(),
        Some("ByteA") => "bytea".to_string(),
        Some("VarChar") => with_args("character varying", ""),
        Some("Char") => with_args("character", "1"),
        Some("Decimal") => with_args("numeric", ""),
        Some("Timestamptz") => format!("{} with time zone", with_args("timestamp", "6")),
        Some("Timestamp") => format!("{} without time zone", with_args("timestamp", "6")),
        Some(other) => format!("<@db.{other}, which this test does not map>"),
        None => match column["type"].as_str() {
            Some("String") => "text".to_string(),
            Some("Int") => "integer".to_string(),
            Some("BigInt") => "bigint".to_string(),
            Some("Float") => "double precision".to_string(),
            Some("Boolean") => "boolean".to_string(),
            Some("DateTime") => "timestamp(3) without time zone".to_string(),
            Some("Json") => "jsonb".to_string(),
            Some("Bytes") => "bytea".to_string(),
            Some("Decimal") => "numeric(65,30)".to_string(),
            other => format!("<Prisma type {other:?}, which this test does not map>"),
        },
    };
    if column["list"].as_bool() == Some(true) {
        format!("{base}[]")
    } else {
        base
    }
}

/// The default expression Prisma expects in the database, as `pg_get_expr` prints it.
fn prisma_default(column: &Value, pg_type: &str) -> Option<String> {
    let default = &column["default"];
    match default {
        Value::Null => None,
        Value::String(s) => Some(format!("'{}'::{pg_type}", s.replace('\'', "''"))),
        Value::Bool(_) | Value::Number(_) => Some(default.to_string()),
        Value::Object(o) if o.contains_key("raw") => {
            let raw = o["raw"].as_str().unwrap_or_default();
            Some(
                raw.strip_prefix("dbgenerated(\"")
                    .and_then(|r| r.strip_suffix("\")"))
                    .unwrap_or(raw)
                    .to_string(),
            )
        }
        Value::Object(o) => match o["name"].as_str() {
            Some("now") => Some("now()".to_string()),
            Some("dbgenerated") => Some(strings(&o["args"]).concat()),
            Some("autoincrement") => Some("<autoincrement>".to_string()),
            // Made by the Prisma client, so the database has no default.
            Some("uuid" | "cuid" | "nanoid" | "ulid") => None,
            _ => Some(format!(
                "<Prisma default {default}, which this test does not map>"
            )),
        },
        Value::Array(_) => Some(format!("<Prisma list default {default}>")),
    }
}

fn prisma_action(action: &Value) -> String {
    match action.as_str() {
        Some("NoAction") => "no action",
        Some("Restrict") => "restrict",
        Some("Cascade") => "cascade",
        Some("SetNull") => "set null",
        Some("SetDefault") => "set default",
        other => return format!("<{other:?}>"),
    }
    .to_string()
}

/// The tables the Prisma schema describes, by table name.
fn prisma_tables(description: &Value) -> BTreeMap<String, Table> {
    let mut tables = BTreeMap::new();
    for model in description["models"].as_array().expect("models") {
        let name = model["table"].as_str().expect("table").to_string();
        let mut table = Table::default();
        if let Some(schema) = model["schema"].as_str().filter(|s| *s != "public") {
            table
                .constraints
                .insert(format!("<model in schema {schema}, not public>"));
        }
        for column in model["columns"].as_array().expect("columns") {
            let ty = prisma_type(column);
            let default = prisma_default(column, &ty);
            table.columns.insert(
                column["column"].as_str().expect("column").to_string(),
                (ty, column["optional"].as_bool().expect("optional"), default),
            );
        }
        if let Some(pk) = model["primaryKey"].as_object() {
            table.constraints.insert(key_line(
                "primary key",
                pk["name"].as_str().unwrap(),
                &strings(&pk["columns"]),
            ));
        }
        for unique in model["uniques"].as_array().expect("uniques") {
            table.constraints.insert(key_line(
                "unique",
                unique["name"].as_str().unwrap(),
                &strings(&unique["columns"]),
            ));
        }
        for index in model["indexes"].as_array().expect("indexes") {
            table.constraints.insert(format!(
                "{} using {}",
                key_line(
                    "index",
                    index["name"].as_str().unwrap(),
                    &strings(&index["columns"])
                ),
                index["algorithm"].as_str().unwrap().to_lowercase()
            ));
        }
        for fk in model["relations"].as_array().expect("relations") {
            table.constraints.insert(fk_line(
                fk["name"].as_str().unwrap(),
                &strings(&fk["columns"]),
                fk["referencesTable"].as_str().unwrap(),
                &strings(&fk["referencesColumns"]),
                &prisma_action(&fk["onDelete"]),
                &prisma_action(&fk["onUpdate"]),
            ));
        }
        assert!(
            tables.insert(name.clone(), table).is_none(),
            "two models map to table {name}"
        );
    }
    tables
}

/// The tables in `public` of a database, by table name.
async fn database_tables(conn: &mut PgConnection) -> BTreeMap<String, Table> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    let columns = sqlx::query(
        "select c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                not a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
         from pg_attribute a
         join pg_class c on c.oid = a.attrelid and c.relkind in ('r', 'p')
         left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where c.relnamespace = 'public'::regnamespace and a.attnum > 0 and not a.attisdropped",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for row in columns {
        let ty: String = row.get(2);
        // timestamptz without a precision holds microseconds: Prisma's Timestamptz(6).
        let ty = match ty.as_str() {
            "timestamp with time zone" => "timestamp(6) with time zone".to_string(),
            "timestamp without time zone" => "timestamp(6) without time zone".to_string(),
            _ => ty,
        };
        let default: Option<String> = row.get(4);
        let default = default.map(|d| match d.as_str() {
            "CURRENT_TIMESTAMP" => "now()".to_string(),
            d if d.starts_with("nextval(") => "<autoincrement>".to_string(),
            d => d.to_string(),
        });
        tables
            .entry(row.get(0))
            .or_default()
            .columns
            .insert(row.get(1), (ty, row.get(3), default));
    }
    let indexes = sqlx::query(
        "select t.relname::text, i.relname::text, x.indisprimary, x.indisunique, am.amname::text,
                array(select coalesce(a.attname::text, '<expression>')
                      from unnest(x.indkey::int2[]) with ordinality k(attnum, n)
                      left join pg_attribute a on a.attrelid = x.indrelid and a.attnum = k.attnum
                      order by k.n),
                x.indpred is not null
         from pg_index x
         join pg_class t on t.oid = x.indrelid
         join pg_class i on i.oid = x.indexrelid
         join pg_am am on am.oid = i.relam
         where t.relnamespace = 'public'::regnamespace",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for row in indexes {
        let (name, primary, unique, method): (String, bool, bool, String) =
            (row.get(1), row.get(2), row.get(3), row.get(4));
        let columns: Vec<String> = row.get(5);
        let mut line = match (primary, unique) {
            (true, _) => key_line("primary key", &name, &columns),
            (false, true) => key_line("unique", &name, &columns),
            (false, false) => format!("{} using {method}", key_line("index", &name, &columns)),
        };
        if row.get::<bool, _>(6) {
            line.push_str(" where <partial>");
        }
        tables
            .entry(row.get(0))
            .or_default()
            .constraints
            .insert(line);
    }
    let foreign_keys = sqlx::query(
        "select t.relname::text, c.conname::text, r.relname::text,
                array(select a.attname::text from unnest(c.conkey) with ordinality k(attnum, n)
                      join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum
                      order by k.n),
                array(select a.attname::text from unnest(c.confkey) with ordinality k(attnum, n)
                      join pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.attnum
                      order by k.n),
                c.confdeltype::text, c.confupdtype::text
         from pg_constraint c
         join pg_class t on t.oid = c.conrelid
         join pg_class r on r.oid = c.confrelid
         where c.contype = 'f' and c.connamespace = 'public'::regnamespace",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let action = |code: String| match code.as_str() {
        "a" => "no action".to_string(),
        "r" => "restrict".to_string(),
        "c" => "cascade".to_string(),
        "n" => "set null".to_string(),
        "d" => "set default".to_string(),
        other => format!("<{other}>"),
    };
    for row in foreign_keys {
        let line = fk_line(
            &row.get::<String, _>(1),
            &row.get::<Vec<String>, _>(3),
            &row.get::<String, _>(2),
            &row.get::<Vec<String>, _>(4),
            &action(row.get(5)),
            &action(row.get(6)),
        );
        tables
            .entry(row.get(0))
            .or_default()
            .constraints
            .insert(line);
    }
    tables
}

/// Every difference between the Prisma models and the database, one line each.
fn mismatches(prisma: &BTreeMap<String, Table>, database: &BTreeMap<String, Table>) -> Vec<String> {
    let mut out = Vec::new();
    for name in prisma.keys().filter(|t| !database.contains_key(*t)) {
        out.push(format!(
            "table {name}: a Prisma model maps to it, the database has no such table"
        ));
    }
    for name in database.keys().filter(|t| !prisma.contains_key(*t)) {
        out.push(format!(
            "table {name}: in the database, no Prisma model maps to it"
        ));
    }
    for (name, model) in prisma {
        let Some(table) = database.get(name) else {
            continue;
        };
        for (column, (ty, nullable, default)) in &model.columns {
            match table.columns.get(column) {
                None => out.push(format!(
                    "{name}.{column}: in the Prisma model, not in the database"
                )),
                Some((db_ty, db_nullable, db_default)) => {
                    if ty != db_ty {
                        out.push(format!(
                            "{name}.{column}: type {ty} in Prisma, {db_ty} in the database"
                        ));
                    }
                    if nullable != db_nullable {
                        let word = |n: &bool| if *n { "nullable" } else { "not null" };
                        out.push(format!(
                            "{name}.{column}: {} in Prisma, {} in the database",
                            word(nullable),
                            word(db_nullable)
                        ));
                    }
                    if default != db_default {
                        out.push(format!(
                            "{name}.{column}: default {default:?} in Prisma, {db_default:?} in the database"
                        ));
                    }
                }
            }
        }
        for column in table.columns.keys() {
            if !model.columns.contains_key(column) {
                out.push(format!(
                    "{name}.{column}: in the database, not in the Prisma model"
                ));
            }
        }
        for line in model.constraints.difference(&table.constraints) {
            out.push(format!(
                "{name}: {line}: in the Prisma model, not in the database"
            ));
        }
        for line in table.constraints.difference(&model.constraints) {
            out.push(format!(
                "{name}: {line}: in the database, not in the Prisma model"
            ));
        }
    }
    out
}

async fn migrated_tables() -> BTreeMap<String, Table> {
    let db = TestDatabase::migrated().await;
    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("connect to the test database");
    database_tables(&mut conn).await
}

#[tokio::test]
async fn prisma_schema_matches_the_migrated_tables() {
    let description = describe(&repo().join(SCHEMA));
    eprintln!("validated {SCHEMA} with {}", description["package"]);
    assert_eq!(
        description["datasource"],
        serde_json::json!({"provider": "postgresql", "urlEnv": "DATABASE_URL"}),
        "the datasource"
    );
    assert_eq!(
        description["formatted"], true,
        "{SCHEMA} is not as `prisma format` writes it"
    );
    let prisma = prisma_tables(&description);
    let database = migrated_tables().await;
    assert_eq!(
        database.len(),
        5,
        "the migrations create the five contract tables in public"
    );
    let problems = mismatches(&prisma, &database);
    assert!(
        problems.is_empty(),
        "{SCHEMA} does not match the tables of migrations/postgres:\n  {}",
        problems.join("\n  ")
    );
    // The comparison looked at everything: each side has every column and key.
    let count = |t: &BTreeMap<String, Table>| {
        t.values()
            .map(|t| t.columns.len() + t.constraints.len())
            .sum::<usize>()
    };
    assert_eq!(
        count(&prisma),
        32 + 5 + 3 + 2 + 4,
        "columns and keys compared"
    );
}

#[test]
fn the_validator_rejects_broken_schemas() {
    let cases = [
        ("Float?", "Flaot?", "Flaot"),
        ("@db.DoublePrecision", "@db.Uuid", "Uuid"),
        ("references: [id]", "references: [idd]", "idd"),
    ];
    for (from, to, named) in cases {
        let dir = tempfile::tempdir().unwrap();
        let output = run_dmmf(&broken_copy(dir.path(), from, to));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "a schema with {from:?} changed to {to:?} was not rejected as invalid:\n{stderr}"
        );
        assert!(
            stderr.contains("not a valid Prisma schema") && stderr.contains(named),
            "the error for {to:?} does not name it:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn the_comparison_names_a_changed_column() {
    let dir = tempfile::tempdir().unwrap();
    let changed = broken_copy(
        dir.path(),
        "Float?   @db.DoublePrecision",
        "Float    @db.Real",
    );
    let problems = mismatches(
        &prisma_tables(&describe(&changed)),
        &migrated_tables().await,
    );
    assert_eq!(
        problems,
        [
            "agent_metrics.value: type real in Prisma, double precision in the database",
            "agent_metrics.value: not null in Prisma, nullable in the database",
        ]
    );
}
