//! Each library call as an asyncio future.
//!
//! On Unix, a loop that can watch a socket starts the call itself (`driven`): the
//! library's future is first polled on the loop's thread, goes on on the runtime's
//! threads, and its outcome comes back through a socket the loop watches; no runtime
//! thread enters Python. Otherwise (Windows' proactor loop has no `add_reader`), the
//! call runs on the library's tokio runtime (pyo3-async-runtimes' runtime), and its
//! result is handed to the event loop that made the call with `call_soon_threadsafe`.
//!
//! Handing a result over that way is the only moment a runtime thread touches Python,
//! and it is counted: at interpreter exit (`atexit`, before Python starts tearing itself
//! down) [`quiesce`] closes the door and waits for every hand-over under way. A runtime
//! thread still inside Python when the interpreter finalizes is stopped by Python
//! mid-call and crashes the process (an abort or a segfault after the program's last
//! line), which is what happened without this, about one exit in three, with calls that
//! had already returned.

use std::future::Future;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;

struct Door {
    closed: bool,
    inside: usize,
}

static DOOR: Mutex<Door> = Mutex::new(Door {
    closed: false,
    inside: 0,
});
static LEFT: Condvar = Condvar::new();

fn door() -> std::sync::MutexGuard<'static, Door> {
    DOOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `call` on the runtime; returns an asyncio future of the running loop that gets
/// its result, or its error raised. Cancelling the future drops the call where it
/// waits: its outcome is then unknown, as any cut-off database call's is.
pub(crate) fn call<'py, F, T>(py: Python<'py>, call: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = running_loop(py)?;
    #[cfg(unix)]
    if let Some(driver) = crate::driven::driver(&event_loop)? {
        return crate::driven::call(&event_loop, driver, call);
    }
    let future = event_loop.call_method0("create_future")?;
    let (loop_ref, future_ref) = (event_loop.unbind(), future.clone().unbind());
    let task = pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
        let result = call.await;
        {
            let mut door = door();
            if door.closed {
                // The interpreter is exiting: nobody awaits this any more.
                return;
            }
            door.inside += 1;
        }
        Python::attach(|py| hand_over(py, &loop_ref, &future_ref, result));
        door().inside -= 1;
        LEFT.notify_all();
    });
    let abort = task.abort_handle();
    let on_done = PyCFunction::new_closure(
        py,
        None,
        None,
        move |args: &Bound<'_, pyo3::types::PyTuple>,
              _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>|
              -> PyResult<()> {
            if args.get_item(0)?.call_method0("cancelled")?.is_truthy()? {
                abort.abort();
            }
            Ok(())
        },
    )?;
    future.call_method1("add_done_callback", (on_done,))?;
    Ok(future)
}

/// Drops `value` inside the library's runtime: connections and pools that go with it
/// hand themselves back through tasks on the runtime, which needs to be there.
pub(crate) fn drop_in_runtime<T>(value: Option<T>) {
    if value.is_some() {
        let _runtime = pyo3_async_runtimes::tokio::get_runtime().enter();
        drop(value);
    }
}

/// Gives `result` to `future` on its loop, unless it was cancelled meanwhile. A loop
/// already closed (the program went on without awaiting) is left alone.
fn hand_over<T>(py: Python<'_>, event_loop: &Py<PyAny>, future: &Py<PyAny>, result: PyResult<T>)
where
    T: for<'a> IntoPyObject<'a>,
{
    let outcome = result.and_then(|value| {
        value
            .into_pyobject(py)
            .map(|v| pyo3::BoundObject::into_bound(v).into_any().unbind())
            .map_err(Into::into)
    });
    let (ok, value) = match outcome {
        Ok(value) => (true, value),
        Err(err) => (false, err.into_value(py).into_any()),
    };
    let delivered = settle(py).and_then(|settle| {
        event_loop
            .bind(py)
            .call_method1("call_soon_threadsafe", (settle, future.bind(py), ok, value))
    });
    if let Err(err) = delivered {
        // Only "Event loop is closed" is expected here; anything else is shown.
        if !err.to_string().contains("closed") {
            err.print(py);
        }
    }
}

/// `memshift._bridge.settle(future, ok, value)`: sets the result or the exception of a
/// future that is not done yet (a cancelled one is left as it is).
fn settle(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static SETTLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    SETTLE.import(py, "memshift._bridge", "settle")
}

fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET_RUNNING_LOOP
        .import(py, "asyncio", "get_running_loop")?
        .call0()
}

/// Closes the door and waits (the GIL released) for every result being handed over, at
/// most `timeout_seconds`; registered with `atexit`. Calls still running are not
/// waited for: their results are dropped without touching Python.
#[pyfunction]
pub(crate) fn quiesce(py: Python<'_>, timeout_seconds: f64) {
    py.detach(|| {
        let deadline = Instant::now() + Duration::from_secs_f64(timeout_seconds.max(0.0));
        let mut door = door();
        door.closed = true;
        while door.inside > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            door = LEFT
                .wait_timeout(door, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    });
}
