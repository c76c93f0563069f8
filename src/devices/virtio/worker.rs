//! The thread that serves a device's queues.
//!
//! It is started when the VMM sets the device up, before any vCPU runs, and
//! installs its seccomp filter first thing ([`crate::seccomp`]); it then
//! waits for activations. An activation (the driver's DRIVER_OK, handled on
//! the vCPU thread) hands it the queue notification eventfds (bound to the
//! guest's QueueNotify writes with ioeventfd) and a function that builds the
//! queue handler, which runs on this thread; it then waits on those eventfds
//! and a stop eventfd and calls the handler with the index of each queue
//! that was notified, until the device is reset or dropped. So the vCPU
//! thread never creates a thread, and no thread inherits another's filter.

use crate::devices::virtio::{ActivateError, DeviceFailures};
use crate::seccomp::ThreadFilter;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Serves one notified queue; returns false to stop serving.
pub type Handler = Box<dyn FnMut(usize) -> bool + Send>;
/// Builds the handler on the worker thread (an error is the activation's).
pub type MakeHandler = Box<dyn FnOnce() -> Result<Handler, HandlerError> + Send>;
/// Why a device could not build its handler.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

struct Activation {
    queue_evts: Vec<EventFd>,
    make: MakeHandler,
}

/// A device's worker thread; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Worker {
    activations: Option<mpsc::Sender<Activation>>,
    /// The thread's answer to each activation.
    started: mpsc::Receiver<Result<(), HandlerError>>,
    /// Sent by the thread each time it stops serving.
    idle: mpsc::Receiver<()>,
    stop: EventFd,
    active: bool,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Start the thread `name`; it installs `filter`, then waits for
    /// [`Self::activate`]. Returns once the filter is in place.
    pub fn spawn(name: &str, filter: ThreadFilter, failures: DeviceFailures) -> io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let thread_stop = stop.try_clone()?;
        let (activations, requests) = mpsc::channel::<Activation>();
        let (started_tx, started) = mpsc::channel();
        let (idle_tx, idle) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            let installed = filter.install(&thread_name);
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if !ok {
                return;
            }
            while let Ok(activation) = requests.recv() {
                // A stop written while idle is stale.
                let _ = thread_stop.read();
                let handler = match (activation.make)() {
                    Ok(h) => {
                        let _ = started_tx.send(Ok(()));
                        h
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        continue;
                    }
                };
                if let Err(e) = serve(&filter, &thread_stop, &activation.queue_evts, handler) {
                    failures.report(format!("device worker {thread_name} stopped serving: {e}"));
                }
                let _ = idle_tx.send(());
            }
        })?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(io::Error::other(e));
            }
            Err(_) => return Err(io::Error::other(format!("worker thread {name} ended at start"))),
        }
        Ok(Self { activations: Some(activations), started, idle, stop, active: false, thread: Some(thread) })
    }

    /// Start serving `queue_evts` with the handler `make` builds (on the
    /// worker thread); any previous activation is stopped first.
    pub fn activate(&mut self, queue_evts: Vec<EventFd>, make: MakeHandler) -> Result<(), ActivateError> {
        self.deactivate();
        let gone = || ActivateError::Worker(io::Error::other("the device worker thread is gone"));
        let sender = self.activations.as_ref().ok_or_else(gone)?;
        sender.send(Activation { queue_evts, make }).map_err(|_| gone())?;
        match self.started.recv() {
            Ok(Ok(())) => {
                self.active = true;
                Ok(())
            }
            Ok(Err(e)) => Err(ActivateError::Handler(e)),
            Err(_) => Err(gone()),
        }
    }

    /// Stop serving (device reset) and wait until the thread is idle.
    pub fn deactivate(&mut self) {
        if !std::mem::take(&mut self.active) {
            return;
        }
        let _ = self.stop.write(1);
        let _ = self.idle.recv();
    }
}

/// Wait on the queue and stop eventfds; call `handle` for each notified
/// queue until stopped (Ok) or until waiting fails (Err: the guest would
/// wait for this device forever).
fn serve(filter: &ThreadFilter, stop: &EventFd, queue_evts: &[EventFd], mut handle: Handler) -> io::Result<()> {
    let stop_token = queue_evts.len() as u64;
    let epoll = Epoll::new()?;
    for (i, evt) in queue_evts.iter().enumerate() {
        epoll.ctl(ControlOperation::Add, evt.as_raw_fd(), EpollEvent::new(EventSet::IN, i as u64))?;
    }
    epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), EpollEvent::new(EventSet::IN, stop_token))?;
    let mut events = vec![EpollEvent::default(); queue_evts.len() + 1];
    let mut first = true;
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == stop_token {
                return Ok(());
            }
            let index = usize::try_from(token).expect("queue index");
            // Drain the counter; several notifications are one pass.
            let _ = queue_evts[index].read();
            if std::mem::take(&mut first) {
                filter.probe();
            }
            if !handle(index) {
                return Ok(());
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it is idle.
        self.activations = None;
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{Policy, ThreadKind};
    use std::time::Duration;

    fn eventfds() -> (Vec<EventFd>, Vec<EventFd>) {
        let evts: Vec<EventFd> = (0..2).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        let kick = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        (evts, kick)
    }

    fn worker() -> Worker {
        Worker::spawn("test-worker", Policy::disabled().thread(ThreadKind::Block).unwrap(), DeviceFailures::default())
            .unwrap()
    }

    #[test]
    fn calls_the_handler_with_the_notified_queue_and_stops_on_reset_and_drop() {
        let mut worker = worker();
        let (tx, rx) = mpsc::channel();
        let (evts, kick) = eventfds();
        let make_tx = tx.clone();
        worker
            .activate(evts, Box::new(move || Ok(Box::new(move |q: usize| make_tx.send(q).is_ok()) as Handler)))
            .unwrap();
        kick[1].write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        kick[0].write(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);
        worker.deactivate();
        kick[0].write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "no calls after reset");

        // Activated again, on the same thread.
        let (evts, kick) = eventfds();
        worker
            .activate(evts, Box::new(move || Ok(Box::new(move |q: usize| tx.send(q + 10).is_ok()) as Handler)))
            .unwrap();
        kick[0].write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 10);
        drop(worker);
        kick[0].write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "no calls after drop");
    }

    #[test]
    fn a_worker_that_cannot_wait_on_its_queues_reports_it() {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let failures = DeviceFailures::default();
        let mut worker =
            Worker::spawn("test-worker", Policy::disabled().thread(ThreadKind::Block).unwrap(), failures.clone())
                .unwrap();
        // A regular file: epoll refuses to watch it (EPERM).
        let file = tempfile::tempfile().unwrap();
        // SAFETY: the descriptor is a live file this test owns; the EventFd
        // takes it over and closes it once.
        let not_pollable = unsafe { EventFd::from_raw_fd(file.into_raw_fd()) };
        worker.activate(vec![not_pollable], Box::new(|| Ok(Box::new(|_: usize| true) as Handler))).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while failures.first().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let what = failures.first().expect("the failure was reported");
        assert!(what.contains("test-worker") && what.contains("stopped serving"), "{what}");
    }

    #[test]
    fn a_handler_that_cannot_be_built_fails_the_activation() {
        let mut worker = worker();
        let (evts, _kick) = eventfds();
        let err = worker.activate(evts, Box::new(|| Err("no root directory".into()))).unwrap_err();
        assert!(matches!(err, ActivateError::Handler(ref e) if e.to_string() == "no root directory"), "{err:?}");
        assert_eq!(crate::exit::error_line(&err), "building the device's handler: no root directory");
        // Idle, not stuck: it can be dropped.
        drop(worker);
    }
}
