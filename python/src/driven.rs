//! Library calls started by the event loop that awaits them (Unix; see `bridge`).
//!
//! A call makes an asyncio future on the running loop and polls the library's future
//! there and then, on the loop's thread and inside the tokio runtime's context: the
//! statement goes to SQLite's worker thread or out on PostgreSQL's socket at once, with
//! no hop to a runtime thread first. When the answer comes, the future goes on on the
//! runtime's threads, where its further steps (a store's several messages) cost what
//! they cost in Rust; its outcome is then queued for the loop, which is woken by one
//! byte on a socket pair whose other end it watches (`add_reader`), and the loop turns
//! the outcome into Python values and sets the asyncio future's result. Compared with
//! running the call on a runtime thread and handing its result back through
//! `call_soon_threadsafe` (pyo3-async-runtimes, and `bridge` where this cannot be
//! used), a call crosses threads once less on the way out, and no runtime thread takes
//! the GIL on the way back.
//!
//! Nothing blocks the loop: its poll does what an `await` in Rust does up to the first
//! suspension (SQLite runs on its own threads; sockets are non-blocking). No runtime
//! thread ever enters Python, so nothing is inside Python when the interpreter exits.
//! Cancelling the asyncio future drops the library's future, as dropping it in Rust
//! does.

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::task::AbortHandle;

use crate::bridge::drop_in_runtime;

/// A call's outcome, turned into Python values on the loop's thread.
type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// A library call that yields its outcome.
type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Runs `call`, started by `event_loop` and finished through its `driver`; returns the
/// asyncio future that gets its result, or its error raised.
pub(crate) fn call<'py, F, T>(
    event_loop: &Bound<'py, PyAny>,
    driver: Arc<Shared>,
    call: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let py = event_loop.py();
    let py_future = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
    let mut future: BoxFuture = Box::pin(async move {
        let result = call.await;
        Box::new(move |py: Python<'_>| result.and_then(|value| value.into_py_any(py))) as Outcome
    });
    let task = Arc::new(Task {
        future: Mutex::new(None),
        state: AtomicU8::new(FIRST_POLL),
        abort: Mutex::new(None),
        py_future: py_future.clone().unbind(),
        driver,
    });
    // The first poll, here: the call starts without waiting for a runtime thread.
    let polled = {
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let _runtime = pyo3_async_runtimes::tokio::get_runtime().enter();
        catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)))
    };
    match polled {
        Ok(Poll::Ready(outcome)) => {
            complete(py, py_future.as_borrowed(), outcome);
            return Ok(py_future);
        }
        Err(panic) => {
            complete(py, py_future.as_borrowed(), panicked(panic));
            return Ok(py_future);
        }
        Ok(Poll::Pending) => {}
    }
    *task.slot() = Some(future);
    // Woken meanwhile (by the database's thread, or by the poll itself): go on now.
    if task
        .state
        .compare_exchange(FIRST_POLL, WAITING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        task.go_on();
    }
    // A cancelled asyncio future drops the library's future.
    py_future.call_method1(
        pyo3::intern!(py, "add_done_callback"),
        (Canceller { task },),
    )?;
    Ok(py_future)
}

/// The driver of `event_loop`, made and registered with it on its first call; `None`
/// for a loop that cannot have one.
pub(crate) fn driver(event_loop: &Bound<'_, PyAny>) -> PyResult<Option<Arc<Shared>>> {
    let py = event_loop.py();
    static DRIVERS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    // One driver per loop, gone with the loop.
    let drivers = DRIVERS
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py
                .import("weakref")?
                .getattr("WeakKeyDictionary")?
                .call0()?
                .unbind())
        })?
        .bind(py);
    let found = match drivers.call_method1(pyo3::intern!(py, "get"), (event_loop,)) {
        Ok(found) => found,
        // Not weakly referenceable.
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyTypeError>(py) => return Ok(None),
        Err(err) => return Err(err),
    };
    if let Ok(driver) = found.cast::<LoopDriver>() {
        return Ok(Some(driver.get().shared.clone()));
    }
    if !found.is_none() {
        return Ok(None);
    }
    let (reader, writer) = std::os::unix::net::UnixStream::pair().map_err(|e| {
        PyRuntimeError::new_err(format!("cannot make the loop's wake-up socket: {e}"))
    })?;
    reader.set_nonblocking(true)?;
    writer.set_nonblocking(true)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
    let shared = Arc::new(Shared {
        done: Mutex::new(Vec::new()),
        signalled: AtomicBool::new(false),
        writer,
    });
    let driver = Bound::new(
        py,
        LoopDriver {
            shared: shared.clone(),
            reader,
        },
    )?;
    match event_loop.call_method1(pyo3::intern!(py, "add_reader"), (fd, &driver)) {
        Ok(_) => {}
        // A loop that cannot watch a socket (Windows' proactor loop).
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyNotImplementedError>(py) => {
            drivers.set_item(event_loop, py.None())?;
            return Ok(None);
        }
        Err(err) => return Err(err),
    }
    drivers.set_item(event_loop, driver)?;
    Ok(Some(shared))
}

/// What a loop's driver shares with the calls it started.
pub(crate) struct Shared {
    /// Outcomes of calls finished since the loop last looked.
    done: Mutex<Vec<(Arc<Task>, Outcome)>>,
    /// Whether a byte is on its way to the loop since it last read them.
    signalled: AtomicBool,
    /// The end of the wake-up socket the runtime's threads write to.
    writer: std::os::unix::net::UnixStream,
}

impl Shared {
    fn done(&self) -> MutexGuard<'_, Vec<(Arc<Task>, Outcome)>> {
        // The list is only pushed to and taken: a panic cannot leave it half-changed.
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `task`'s outcome for the loop and wakes the loop (one byte until it reads
    /// them).
    fn finish(&self, task: Arc<Task>, outcome: Outcome) {
        self.done().push((task, outcome));
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // Full means the loop has bytes to read already; a closed loop reads no more.
            while let Err(e) = (&self.writer).write(&[1]) {
                if e.kind() != ErrorKind::Interrupted {
                    break;
                }
            }
        }
    }
}

/// The callback a loop runs when its wake-up socket is readable: sets the results of
/// the calls that finished.
#[pyclass(frozen, module = "memshift._native")]
struct LoopDriver {
    shared: Arc<Shared>,
    reader: std::os::unix::net::UnixStream,
}

#[pymethods]
impl LoopDriver {
    fn __call__(&self, py: Python<'_>) {
        let mut bytes = [0u8; 64];
        loop {
            match (&self.reader).read(&mut bytes) {
                Ok(n) if n == bytes.len() => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        // Cleared after reading (a byte written before was just read, and its outcome
        // is taken below) and before taking: an outcome queued from now on writes a
        // byte again. Cleared before reading, a byte read here could leave the flag
        // set with no byte left, and the next outcome would wait for ever.
        self.shared.signalled.store(false, Ordering::Release);
        let done = std::mem::take(&mut *self.shared.done());
        for (task, outcome) in done {
            complete(py, task.py_future.bind_borrowed(py), outcome);
        }
    }
}

impl Drop for LoopDriver {
    fn drop(&mut self) {
        // The outcomes refer to the driver: let them go with it.
        self.shared.done().clear();
    }
}

/// The first poll is running on the loop's thread.
const FIRST_POLL: u8 = 0;
/// The first poll returned; the call waits for its first wake.
const WAITING: u8 = 1;
/// The call goes on on the runtime (or was cancelled).
const ON_RUNTIME: u8 = 2;

/// One call, and the asyncio future it completes.
struct Task {
    /// The call between its first poll and its first wake.
    future: Mutex<Option<BoxFuture>>,
    state: AtomicU8,
    /// The call's task on the runtime, once it is there.
    abort: Mutex<Option<AbortHandle>>,
    py_future: Py<PyAny>,
    driver: Arc<Shared>,
}

/// The waker of the first poll: its first wake moves the call to the runtime.
impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(WAITING, ON_RUNTIME, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => self.spawn(),
            // During the first poll: `call` sees the state changed and goes on itself.
            Err(FIRST_POLL) => {
                let _ = self.state.compare_exchange(
                    FIRST_POLL,
                    ON_RUNTIME,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Err(_) => {}
        }
    }
}

impl Task {
    fn slot(&self) -> MutexGuard<'_, Option<BoxFuture>> {
        self.future.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a wake during the first poll.
    fn go_on(self: &Arc<Self>) {
        self.state.store(ON_RUNTIME, Ordering::Release);
        self.spawn();
    }

    /// Runs the rest of the call on the runtime, then hands its outcome to the loop.
    fn spawn(self: &Arc<Self>) {
        let Some(future) = self.slot().take() else {
            return; // Cancelled.
        };
        let task = self.clone();
        let handle = pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
            let outcome = Guarded(future).await;
            task.driver.finish(task.clone(), outcome);
        });
        *self.abort.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.abort_handle());
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // A call dropped between its first poll and its first wake (its loop went
        // away) may hand connections back to their pools, which needs the runtime.
        drop_in_runtime(
            self.future
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

/// Sets `py_future`'s result or exception from `outcome`, unless it was cancelled.
fn complete(py: Python<'_>, py_future: Borrowed<'_, '_, PyAny>, outcome: Outcome) {
    if py_future
        .call_method0(pyo3::intern!(py, "done"))
        .and_then(|done| done.is_truthy())
        .unwrap_or(true)
    {
        return;
    }
    let set = match outcome(py) {
        Ok(value) => py_future.call_method1(pyo3::intern!(py, "set_result"), (value,)),
        Err(err) => {
            py_future.call_method1(pyo3::intern!(py, "set_exception"), (err.into_value(py),))
        }
    };
    if let Err(err) = set {
        err.write_unraisable(py, Some(&py_future));
    }
}

/// A call whose panic is its outcome, as an error.
struct Guarded(BoxFuture);

impl Future for Guarded {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx)))
            .unwrap_or_else(|panic| Poll::Ready(panicked(panic)))
    }
}

/// The outcome of a call that panicked.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> Outcome {
    let message = format!("the library panicked: {}", panic_message(&*panic));
    Box::new(move |_| Err(pyo3::panic::PanicException::new_err(message)))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// The done-callback of an asyncio future still running: dropping the library's call
/// when it was cancelled.
#[pyclass(frozen, module = "memshift._native")]
struct Canceller {
    task: Arc<Task>,
}

#[pymethods]
impl Canceller {
    fn __call__(&self, py_future: &Bound<'_, PyAny>) -> PyResult<()> {
        if py_future
            .call_method0(pyo3::intern!(py_future.py(), "cancelled"))?
            .is_truthy()?
        {
            self.task.state.store(ON_RUNTIME, Ordering::Release);
            drop_in_runtime(self.task.slot().take());
            if let Some(abort) = self
                .task
                .abort
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                abort.abort();
            }
        }
        Ok(())
    }
}
