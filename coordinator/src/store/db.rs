//! The SQL layer under the store: one small API over SQLite (rusqlite) and PostgreSQL (the
//! `postgres` crate), so that every query of the store is written once.
//!
//! The store's SQL is the common part of both dialects: numbered parameters `?1`, `?2`, ...
//! (rewritten to `$1`, `$2`, ... for PostgreSQL), `INSERT ... ON CONFLICT`, `RETURNING`,
//! `COALESCE`, `CASE`. Integers are 64-bit on both sides (`BIGINT` in the PostgreSQL schema),
//! flags are integers 0/1, times are microseconds since the epoch, JSON is text. What differs
//! (the event sequence, migrations) is asked of [`Connection::backend`].
//!
//! Values cross the boundary as [`Value`]: a parameter is converted to the type PostgreSQL
//! inferred for its placeholder, and a column is read by its declared type, so a query that
//! mixes the two dialects' habits fails with an error naming the column, never silently.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::collections::HashMap;

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// One SQL value, as a parameter or as a column read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// A 64-bit integer (also flags).
    Int(i64),
    /// A double.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

/// Turns a Rust value into a query parameter.
pub trait ToValue {
    /// The parameter.
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, u32, u64, usize, i16, u16);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl ToValue for crate::model::LabName {
    fn to_value(&self) -> Value {
        Value::Text(self.as_str().to_string())
    }
}
impl ToValue for crate::model::SessionId {
    fn to_value(&self) -> Value {
        Value::Text(self.as_str().to_string())
    }
}
impl ToValue for crate::model::AttemptNo {
    fn to_value(&self) -> Value {
        Value::Int(self.0.into())
    }
}
impl FromValue for crate::model::AttemptNo {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        i32::from_value(v).map(crate::model::AttemptNo)
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// Query parameters: `params![a, b, c]` is a `&[Value]`.
macro_rules! params {
    () => { &[] as &[$crate::store::db::Value] };
    ($($x:expr),+ $(,)?) => {
        &[$($crate::store::db::ToValue::to_value(&$x)),+] as &[$crate::store::db::Value]
    };
}
pub(crate) use params;

/// Reads a column into a Rust value.
pub trait FromValue: Sized {
    /// The value, or an error naming what was found instead.
    fn from_value(v: Value) -> std::result::Result<Self, String>;
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Int(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::Blob(_) => "bytes",
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> std::result::Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(i)
                        .map_err(|_| format!("integer {i} does not fit {}", stringify!($t))),
                    other => Err(format!("expected an integer, found {}", kind(&other))),
                }
            }
        }
    )*};
}
int_from_value!(i64, i32, u32, u64, usize);

impl FromValue for bool {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i != 0),
            other => Err(format!("expected a flag, found {}", kind(&other))),
        }
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {}", kind(&other))),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {}", kind(&other))),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            other => Err(format!("expected bytes, found {}", kind(&other))),
        }
    }
}
impl FromValue for Value {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(v)
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column index (kept generic so that `r.get::<_, T>(0)` reads as it does with rusqlite).
pub trait RowIndex {
    /// The index.
    fn index(&self) -> usize;
}
impl RowIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// One result row.
pub enum Row<'r> {
    /// From SQLite.
    Sqlite(&'r rusqlite::Row<'r>),
    /// From PostgreSQL.
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `i` as a `T`; an error names the column and what it held.
    pub fn get<I: RowIndex, T: FromValue>(&self, i: I) -> Result<T> {
        let i = i.index();
        let v = match self {
            Row::Sqlite(r) => sqlite_value(r, i)?,
            Row::Pg(r) => pg_value(r, i)?,
        };
        T::from_value(v).map_err(|e| Error::Corrupt(format!("column {}: {e}", self.name(i))))
    }

    fn name(&self, i: usize) -> String {
        match self {
            Row::Sqlite(r) => r
                .as_ref()
                .column_name(i)
                .map(str::to_string)
                .unwrap_or_else(|_| i.to_string()),
            Row::Pg(r) => r
                .columns()
                .get(i)
                .map(|c| c.name().to_string())
                .unwrap_or_else(|| i.to_string()),
        }
    }
}

fn sqlite_value(r: &rusqlite::Row<'_>, i: usize) -> Result<Value> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(
            String::from_utf8(t.to_vec())
                .map_err(|e| Error::Corrupt(format!("column {i}: {e}")))?,
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

fn pg_value(r: &postgres::Row, i: usize) -> Result<Value> {
    use postgres::types::Type;
    let Some(col) = r.columns().get(i) else {
        return Err(Error::Internal(format!("no column {i} in the result")));
    };
    let ty = col.type_().clone();
    fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
        v.map_or(Value::Null, f)
    }
    Ok(match ty {
        Type::INT8 => opt(r.try_get::<_, Option<i64>>(i)?, Value::Int),
        Type::INT4 => opt(r.try_get::<_, Option<i32>>(i)?, |v| Value::Int(v.into())),
        Type::INT2 => opt(r.try_get::<_, Option<i16>>(i)?, |v| Value::Int(v.into())),
        Type::BOOL => opt(r.try_get::<_, Option<bool>>(i)?, |v| Value::Int(v.into())),
        Type::FLOAT8 => opt(r.try_get::<_, Option<f64>>(i)?, Value::Real),
        Type::FLOAT4 => opt(r.try_get::<_, Option<f32>>(i)?, |v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            opt(r.try_get::<_, Option<String>>(i)?, Value::Text)
        }
        Type::BYTEA => opt(r.try_get::<_, Option<Vec<u8>>>(i)?, Value::Blob),
        other => {
            return Err(Error::Internal(format!(
                "column {} has PostgreSQL type {other}, which the store does not read \
                 (cast it to BIGINT, DOUBLE PRECISION or TEXT in the query)",
                col.name()
            )));
        }
    })
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                _ => Err(format!("an integer parameter where PostgreSQL expects {ty}").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(format!("a real parameter where PostgreSQL expects {ty}").into()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(ty, out)
                }
                _ => Err(format!("a text parameter where PostgreSQL expects {ty}").into()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.as_slice().to_sql(ty, out),
                _ => Err(format!("a bytes parameter where PostgreSQL expects {ty}").into()),
            },
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A PostgreSQL connection with its prepared statements.
pub struct PgConn {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

/// How many prepared statements a PostgreSQL connection keeps before it starts over.
const STATEMENT_CACHE: usize = 512;

impl PgConn {
    /// Wraps a connected client.
    pub fn new(client: postgres::Client) -> PgConn {
        PgConn {
            client,
            statements: HashMap::new(),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare(&pg_sql(sql))?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// The client, for what the store does only on PostgreSQL (LISTEN, NOTIFY).
    pub fn client(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// Rewrites SQLite's `?N` placeholders as PostgreSQL's `$N`, leaving string literals and
/// quoted names alone.
pub fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push(c);
                }
                '?' => out.push('$'),
                _ => out.push(c),
            },
        }
    }
    out
}

/// A database connection of either kind.
pub enum Connection {
    /// SQLite.
    Sqlite(rusqlite::Connection),
    /// PostgreSQL.
    Pg(Box<RefCell<PgConn>>),
}

fn pg_params(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

impl Connection {
    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self {
            Connection::Sqlite(_) => Backend::Sqlite,
            Connection::Pg(_) => Backend::Postgres,
        }
    }

    /// Checks that the database answers (the health check).
    pub fn ping(&self) -> Result<()> {
        self.query_row("SELECT 1", params![], |r| r.get::<_, i64>(0))
            .map(|_| ())
    }

    /// Runs one statement; returns how many rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        match self {
            Connection::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params.iter()))?),
            Connection::Pg(c) => {
                let mut c = c.borrow_mut();
                let stmt = c.statement(sql)?;
                Ok(c.client.execute(&stmt, &pg_params(params))? as usize)
            }
        }
    }

    /// Runs several statements with no parameters (migrations).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Connection::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Connection::Pg(c) => Ok(c.borrow_mut().client.batch_execute(sql)?),
        }
    }

    /// Calls `f` on each row in order until it returns `false`.
    pub fn query_each(
        &self,
        sql: &str,
        params: &[Value],
        mut f: impl FnMut(&Row<'_>) -> Result<bool>,
    ) -> Result<()> {
        match self {
            Connection::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(r) = rows.next()? {
                    if !f(&Row::Sqlite(r))? {
                        break;
                    }
                }
                Ok(())
            }
            Connection::Pg(c) => {
                let mut c = c.borrow_mut();
                let stmt = c.statement(sql)?;
                let mut rows = c.client.query_raw(&stmt, params.iter())?;
                use postgres::fallible_iterator::FallibleIterator;
                while let Some(r) = rows.next()? {
                    if !f(&Row::Pg(&r))? {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// Every row, each through `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[Value],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query_each(sql, params, |r| {
            out.push(f(r)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The first row through `f`, or `None` when there is none.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Value],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.query_each(sql, params, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(false)
        })?;
        Ok(out)
    }

    /// The first row through `f`; an error when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[Value],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| Error::Internal(format!("query returned no row: {sql}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        assert_eq!(
            pg_sql("SELECT '?1', \"a?\" FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT '?1', \"a?\" FROM t WHERE a = $1 AND b = $12"
        );
    }

    #[test]
    fn values_convert_both_ways_on_sqlite() {
        let c = Connection::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB)")
            .unwrap();
        c.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            params![7i32, 1.5, "x", vec![1u8, 2]],
        )
        .unwrap();
        let (i, r, s, b): (u32, f64, String, Vec<u8>) = c
            .query_row("SELECT i, r, s, b FROM t", params![], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!((i, r, s.as_str(), b), (7, 1.5, "x", vec![1, 2]));
        let err = c
            .query_row("SELECT s FROM t", params![], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(err.to_string().contains("column s"), "{err}");
        assert!(
            c.query_opt("SELECT i FROM t WHERE i = ?1", params![8], |r| r
                .get::<_, i64>(0))
                .unwrap()
                .is_none()
        );
    }
}
