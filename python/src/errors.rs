//! The library's errors as the package's exceptions (defined in `memshift/errors.py`, so
//! that each can also be the built-in exception it is a kind of).

use memshift::{Chain, Error};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

macro_rules! exception {
    ($fn:ident, $name:literal) => {
        fn $fn(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
            static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
            TYPE.import(py, "memshift.errors", $name)
        }
    };
}

exception!(config_error, "ConfigError");
exception!(invalid_input_error, "InvalidInputError");
exception!(connection_error, "ConnectionError");
exception!(schema_error, "SchemaError");
exception!(database_error, "DatabaseError");

/// `err` as the exception of its kind, its message the whole chain of causes (which the
/// library writes without passwords).
pub(crate) fn to_py(err: &Error) -> PyErr {
    let message = Chain(err).to_string();
    Python::attach(|py| {
        let kind = match err {
            Error::Config { .. } => config_error(py),
            Error::InvalidInput { .. } | Error::Json { .. } => invalid_input_error(py),
            Error::SchemaMissing { .. } => schema_error(py),
            _ if err.is_connection() => connection_error(py),
            _ => database_error(py),
        };
        of_kind(kind, message)
    })
}

/// An exception of `kind` (or the error of importing it) with `message`.
fn of_kind(kind: PyResult<&Bound<'_, PyType>>, message: String) -> PyErr {
    match kind {
        Ok(kind) => PyErr::from_type(kind.clone(), message),
        Err(import) => import,
    }
}

/// The conversion `?` uses on the library's results.
pub(crate) trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for memshift::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(|err| to_py(&err))
    }
}

/// An `InvalidInputError` with `message`.
pub(crate) fn invalid_input(message: String) -> PyErr {
    Python::attach(|py| of_kind(invalid_input_error(py), message))
}

/// A `ConfigError` with `message`.
pub(crate) fn config(message: String) -> PyErr {
    Python::attach(|py| of_kind(config_error(py), message))
}
