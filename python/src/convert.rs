//! Python values to and from the JSON text the library stores.
//!
//! A value goes in as JSON text written here from the Python objects themselves, and
//! comes back through Python's own `json.loads`, so what an agent gets back is what it
//! stored: dicts in their order, ints of any size exactly, floats to the last bit,
//! `None`, bools, strings and lists (a tuple comes back as a list, as JSON has no
//! tuple). What JSON cannot hold is refused with the path to it, not changed.

use std::fmt::Write as _;

use memshift::Json;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors;

/// Nesting deeper than this is refused: it is the most the library reads back (the JSON
/// parser's limit), and it stops a list that contains itself.
const MAX_DEPTH: usize = 128;

/// `value` as JSON text; `what` names it in errors (`data`, `definition`, ...).
pub(crate) fn to_json(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Json> {
    let mut out = String::with_capacity(64);
    let mut path = what.to_string();
    write_value(value, &mut out, &mut path, 0)?;
    out.parse::<Json>()
        .map_err(|err| errors::invalid_input(format!("{what}: not JSON after writing: {err}")))
}

/// A dict of JSON values as the library's [`memshift::Metadata`] (a memory's metadata, a
/// search's metadata filter).
pub(crate) fn to_metadata(value: &Bound<'_, PyAny>) -> PyResult<memshift::Metadata> {
    serde_json::from_str(to_json(value, "metadata")?.as_str())
        .map_err(|err| errors::invalid_input(format!("metadata: {err}")))
}

fn write_value(
    value: &Bound<'_, PyAny>,
    out: &mut String,
    path: &mut String,
    depth: usize,
) -> PyResult<()> {
    if depth > MAX_DEPTH {
        return Err(errors::invalid_input(format!(
            "{path}: nested deeper than {MAX_DEPTH} levels (or it contains itself)"
        )));
    }
    if value.is_none() {
        out.push_str("null");
    } else if let Ok(flag) = value.cast::<PyBool>() {
        out.push_str(if flag.is_true() { "true" } else { "false" });
    } else if let Ok(int) = value.cast::<PyInt>() {
        match int.extract::<i64>() {
            Ok(small) => {
                let _ = write!(out, "{small}");
            }
            // Any size: int's own decimal form (not str(), which a subclass such as an
            // IntEnum may change).
            Err(_) => out.push_str(&int_repr(value.py())?.call1((int,))?.extract::<String>()?),
        }
    } else if let Ok(float) = value.cast::<PyFloat>() {
        let number = float.value();
        if !number.is_finite() {
            return Err(errors::invalid_input(format!(
                "{path}: {number} is not a JSON number (NaN and infinities have no JSON form)"
            )));
        }
        // The shortest text that reads back as the same float, always with a '.' or an
        // exponent, so it comes back a float and not an int.
        out.push_str(&serde_json::to_string(&number).map_err(|err| {
            errors::invalid_input(format!("{path}: {number} cannot be written: {err}"))
        })?);
    } else if let Ok(text) = value.cast::<PyString>() {
        write_str(text, out, path)?;
    } else if let Ok(dict) = value.cast::<PyDict>() {
        out.push('{');
        for (i, (key, item)) in dict.iter().enumerate() {
            let Ok(key) = key.cast::<PyString>() else {
                return Err(errors::invalid_input(format!(
                    "{path}: the key {} is of type {}, and JSON object keys are strings; \
                     convert the keys first (str(key))",
                    key.repr().map_or_else(|_| "?".into(), |r| r.to_string()),
                    type_name(&key),
                )));
            };
            if i > 0 {
                out.push(',');
            }
            write_str(key, out, path)?;
            out.push(':');
            let at = path.len();
            let _ = write!(path, "[{}]", key.repr()?);
            write_value(&item, out, path, depth + 1)?;
            path.truncate(at);
        }
        out.push('}');
    } else if let Ok(list) = value.cast::<PyList>() {
        write_items(list.iter(), out, path, depth)?;
    } else if let Ok(tuple) = value.cast::<PyTuple>() {
        write_items(tuple.iter(), out, path, depth)?;
    } else {
        return Err(errors::invalid_input(format!(
            "{path} is of type {}, which JSON cannot hold; store dicts, lists, tuples, str, int, \
             float, bool and None (convert it first, e.g. a set to a list, a datetime to \
             isoformat())",
            type_name(value)
        )));
    }
    Ok(())
}

fn write_items<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    out: &mut String,
    path: &mut String,
    depth: usize,
) -> PyResult<()> {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let at = path.len();
        let _ = write!(path, "[{i}]");
        write_value(&item, out, path, depth + 1)?;
        path.truncate(at);
    }
    out.push(']');
    Ok(())
}

fn write_str(text: &Bound<'_, PyString>, out: &mut String, path: &str) -> PyResult<()> {
    let text = text.to_str().map_err(|_| {
        errors::invalid_input(format!(
            "{path}: a string holding a lone surrogate, which is not Unicode text"
        ))
    })?;
    // serde_json's escaping: quotes, backslashes and control characters.
    out.push_str(&serde_json::to_string(text).expect("a str is always JSON"));
    Ok(())
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .qualname()
        .map_or_else(|_| "value".into(), |name| name.to_string())
}

fn int_repr(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static INT_REPR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    Ok(INT_REPR
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py
                .import("builtins")?
                .getattr("int")?
                .getattr("__repr__")?
                .unbind())
        })?
        .bind(py))
}

/// Stored JSON text, turned into Python objects when it reaches Python.
pub(crate) struct JsonText(pub(crate) String);

impl<'py> IntoPyObject<'py> for JsonText {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        from_json(py, &self.0)
    }
}

/// Python's `json.loads(text)`: dicts in the text's order, ints of any size, floats read
/// exactly as Python reads them.
pub(crate) fn from_json<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOADS
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py.import("json")?.getattr("loads")?.unbind())
        })?
        .bind(py)
        .call1((text,))
}
