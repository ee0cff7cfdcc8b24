//! The one place that decides what a PostgreSQL error means for a writer: wait and try
//! the same statements again, or look for the rows PostgreSQL refuses.
//!
//! Only SQLSTATEs that describe the values of a row count as the data's fault. Anything
//! else (a lost connection, a server shutting down, a full disk, a serialization failure,
//! a missing table or privilege, a code this list does not know) is retried: those
//! fail every row alike, and setting rows aside for them would empty the changelog into
//! the rejects table while an operator fixes the server.

/// What the caller should do about a PostgreSQL error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgErrorClass {
    /// Not the data's fault: roll back and try the same batch again after a backoff.
    Retry,
    /// PostgreSQL refused a value of some row: the rows without one can be written, the
    /// rows with one cannot, however often they are retried.
    Data,
}

/// Classifies an error of the driver: server errors by SQLSTATE, everything else
/// (connection refused or closed, I/O, a time-out, a protocol hiccup) is retried.
pub fn classify(error: &tokio_postgres::Error) -> PgErrorClass {
    match error.code() {
        Some(state) => classify_sqlstate(state.code()),
        None => PgErrorClass::Retry,
    }
}

/// Classifies a five-character SQLSTATE.
///
/// Data:
/// - class `22` data exception: a value PostgreSQL cannot take, e.g. `22008` a timestamp
///   out of range, `22021` a byte sequence invalid in the encoding (a NUL in `text`),
///   `22001` a string too long, `22003` a number out of range, `22P02` invalid JSON;
/// - class `23` integrity constraint violation: `NOT NULL`, `CHECK`, unique or foreign
///   key;
/// - `21000` cardinality violation (one statement touching a row twice): composition of
///   the batch, which splitting it resolves;
/// - `54000` program limit exceeded: a value too big for an index entry or for `jsonb`.
///
/// Everything else is retried, among others class `08` connection exceptions, `57P0x`
/// shutdowns and `57014` cancelled statements, class `53` insufficient resources,
/// `40001` / `40P01` serialization failures and deadlocks, `25006` a read-only server
/// (a standby after a fail-over), and class `42` (undefined table, missing privilege,
/// `42804` datatype mismatch): those come from the statement or the schema, are raised
/// while planning, and fail every row of every batch alike.
pub fn classify_sqlstate(code: &str) -> PgErrorClass {
    match code.get(..2) {
        Some("22" | "23") => PgErrorClass::Data,
        _ if code == "21000" || code == "54000" => PgErrorClass::Data,
        _ => PgErrorClass::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    #[test]
    fn values_postgres_cannot_take_are_the_data_s_fault() {
        for state in [
            SqlState::DATETIME_FIELD_OVERFLOW,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::STRING_DATA_RIGHT_TRUNCATION,
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::UNTRANSLATABLE_CHARACTER,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::CHECK_VIOLATION,
            SqlState::UNIQUE_VIOLATION,
            SqlState::FOREIGN_KEY_VIOLATION,
            SqlState::CARDINALITY_VIOLATION,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
        ] {
            assert_eq!(
                classify_sqlstate(state.code()),
                PgErrorClass::Data,
                "{}",
                state.code()
            );
        }
    }

    #[test]
    fn outages_shutdowns_and_conflicts_are_retried() {
        for state in [
            SqlState::CONNECTION_EXCEPTION,
            SqlState::CONNECTION_FAILURE,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::QUERY_CANCELED,
            SqlState::INSUFFICIENT_RESOURCES,
            SqlState::DISK_FULL,
            SqlState::OUT_OF_MEMORY,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::IN_FAILED_SQL_TRANSACTION,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::INTERNAL_ERROR,
        ] {
            assert_eq!(
                classify_sqlstate(state.code()),
                PgErrorClass::Retry,
                "{}",
                state.code()
            );
        }
    }

    #[test]
    fn errors_of_the_statement_or_schema_are_retried_not_blamed_on_rows() {
        for state in [
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_COLUMN,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::DATATYPE_MISMATCH,
            SqlState::SYNTAX_ERROR,
            SqlState::INVALID_PASSWORD,
            SqlState::FEATURE_NOT_SUPPORTED,
            SqlState::STATEMENT_TOO_COMPLEX,
            SqlState::TOO_MANY_COLUMNS,
        ] {
            assert_eq!(
                classify_sqlstate(state.code()),
                PgErrorClass::Retry,
                "{}",
                state.code()
            );
        }
    }

    #[test]
    fn unknown_or_malformed_codes_are_retried() {
        for code in ["", "2", "ZZ999", "99999", "2x000"] {
            assert_eq!(classify_sqlstate(code), PgErrorClass::Retry, "{code:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried() {
        // Port 1 on loopback: nothing listens there, so the connect fails at once with an
        // I/O error that carries no SQLSTATE.
        let error = match tokio_postgres::connect(
            "host=127.0.0.1 port=1 user=x connect_timeout=5",
            tokio_postgres::NoTls,
        )
        .await
        {
            Ok(_) => panic!("something accepted a PostgreSQL connection on port 1"),
            Err(e) => e,
        };
        assert!(error.code().is_none(), "{error}");
        assert_eq!(classify(&error), PgErrorClass::Retry);
    }
}
