//! The HTTP edge: the listeners and the accept loop in front of the axum routers, with the
//! timeouts, the connection cap and the listen backlog that `axum::serve` does not have.
//!
//! - **Backlog.** Each listener is bound with `server.backlog` (default 4096, the kernel caps it at
//!   `net.core.somaxconn`), so a burst of connections right after start is queued by the kernel
//!   instead of dropped and retried after a 1 s SYN retransmit, as with the usual 128.
//! - **Timeouts.** Each connection is in one phase (`connection::Phase`) at a time, with its own
//!   deadline: the header-read timeout from accept (or from the first byte of a later request) to
//!   the end of the request head, the idle timeout between requests, and none while a request is
//!   served. The request body has its own timeout between two reads, answered 408
//!   (`service`). hyper 1.x has a `header_read_timeout`, but it starts again as soon as a
//!   keep-alive connection goes idle, so it bounds idle time and header time together and the
//!   two cannot be set apart (nginx's `keepalive_timeout` and `client_header_timeout`); it is off
//!   here and the connection task keeps both deadlines itself.
//! - **Connection cap.** At most `max_connections` connections are open (lowered to fit the
//!   descriptor limit, see [`connection_cap`]). A client arriving at the cap is accepted and an
//!   idle connection is closed for it, the oldest first, those that never sent a byte or sit
//!   between requests before those halfway through a request head; a connection serving a
//!   request is never shed. If all are busy, the new client waits for the first to finish.
//!   When `accept` fails for lack of descriptors (EMFILE, ENFILE), the loop sheds idle
//!   connections and backs off briefly instead of spinning.
//! - **Graceful stop.** When the shutdown future completes, the loop stops accepting, every
//!   connection finishes the request it is serving (idle ones close at once), and [`serve`]
//!   returns when the last one has closed.

mod connection;
pub mod reply;
mod service;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::errno::Errno;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::Served;
use crate::config::EdgeConfig;
use connection::{Conn, Phase};
use service::EdgeService;

/// The router a listener serves, swapped whole by a reload. The edge loads it for each request,
/// which holds it (and so the plugins of its generation) until it is answered: a reload drains
/// the old router once nothing holds it. Loaded here rather than through a router of its own in
/// front, which would route every request twice.
pub type Routes = Arc<ArcSwap<Served>>;

/// The admin listener's connection cap: operators and scrapers, not the public.
pub const ADMIN_CONNECTIONS: usize = 32;

/// Binds `addr` with a listen backlog of `backlog`; like `TcpListener::bind`, with
/// `SO_REUSEADDR` on Unix so a restart does not wait for old connections in TIME_WAIT.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The backlog the kernel grants for `configured`: Linux caps it at `net.core.somaxconn`.
pub fn effective_backlog(configured: u32) -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map_or(configured, |max| configured.min(max))
}

/// The descriptors one plugin holds while it idles, at most: a library's file (loaded in place)
/// or sealed private copy and the drivers of its own tokio runtime (epoll, its waker, ...), or
/// the pipes to a child process. Checked against the real server by the test
/// `edge::a_plugin_holds_no_more_descriptors_than_the_cap_leaves_it`.
pub const DESCRIPTORS_PER_PLUGIN: usize = 8;

/// `configured` lowered, when needed, to leave descriptors for everything else under the soft
/// `RLIMIT_NOFILE`: the admin listener's connections, 32 for the runtime, log and config files,
/// [`DESCRIPTORS_PER_PLUGIN`] per plugin, and an eighth of the limit as slack. Logs the lowered
/// value.
pub fn connection_cap(configured: usize, plugins: usize) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _hard)| soft);
    let cap = cap_for_limit(configured, limit, plugins);
    if cap < configured {
        tracing::info!(
            max_connections = cap,
            configured,
            open_files_limit = limit,
            "max_connections lowered to {cap} to fit the open-files limit (ulimit -n); \
             raise the limit to serve more connections"
        );
    }
    cap
}

/// Grows this process's descriptor table, while it has one thread, to hold what `plugins`
/// plugins will open (`DESCRIPTORS_PER_PLUGIN`, 8, each, and 256 more), within the soft
/// `RLIMIT_NOFILE`. Linux grows the table by doubling as descriptors are opened, and once a
/// process has threads every growth waits for an RCU grace period, during which the thread that
/// opens the descriptor waits (and with it, a plugin's load that holds the dynamic loader's lock):
/// 1,000 plugins starting at once spent 40–60 ms of a 0.5 s start in those waits on a 2-core VM
/// (BENCHMARKS.md, start-up). Grown before the runtime starts, the table costs none of them, and
/// 8 bytes per slot. Asking for fewer slots than the table has does nothing.
pub fn reserve_descriptor_table(plugins: usize) {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .and_then(|(soft, _hard)| usize::try_from(soft).ok())
        .unwrap_or(1024);
    let top = (DESCRIPTORS_PER_PLUGIN * plugins + 256).min(limit.saturating_sub(1));
    let Ok(top) = i32::try_from(top) else {
        return;
    };
    // The lowest free descriptor at `top` or above: the table grows to hold it, then it is
    // closed again. (Standard error may be closed; then the table grows as descriptors come.)
    use nix::fcntl::{FcntlArg, fcntl};
    if let Ok(fd) = fcntl(std::io::stderr(), FcntlArg::F_DUPFD_CLOEXEC(top)) {
        let _ = nix::unistd::close(fd);
    }
}

fn cap_for_limit(configured: usize, limit: Option<u64>, plugins: usize) -> usize {
    let Some(limit) = limit.and_then(|l| usize::try_from(l).ok()) else {
        return configured;
    };
    let reserved = ADMIN_CONNECTIONS + 32 + DESCRIPTORS_PER_PLUGIN * plugins + limit / 8;
    configured.min(limit.saturating_sub(reserved).max(1))
}

/// The open connections of one listener, for shedding.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn insert(self: &Arc<Self>, conn: Arc<Conn>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn);
        Registered {
            registry: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks up to `n` connections that serve no request to close, oldest first, those waiting
    /// for a request before those halfway through a request head. Returns how many were asked.
    fn shed(&self, n: usize) -> usize {
        let conns = self.lock();
        // Ties in `since` (the same millisecond) go to the earlier accepted, the smaller id.
        let mut candidates: Vec<_> = conns
            .iter()
            .filter(|(_, c)| !c.is_shed())
            .filter_map(|(id, c)| {
                let rank = match c.phase() {
                    Phase::Fresh | Phase::Idle => 0,
                    Phase::Head => 1,
                    Phase::Busy => return None,
                };
                Some(((rank, c.since(), *id), c))
            })
            .collect();
        if n == 1 {
            // The usual case at the cap: one pass, no sort.
            return candidates
                .iter()
                .min_by_key(|(key, _)| *key)
                .map_or(0, |(_, c)| usize::from(c.shed()));
        }
        candidates.sort_unstable_by_key(|(key, _)| *key);
        candidates.iter().take(n).filter(|(_, c)| c.shed()).count()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Asks every connection to finish its request in progress and close.
    fn drain(&self) {
        for conn in self.lock().values() {
            conn.drain();
        }
    }
}

/// A connection's entry in the registry, removed when the connection's task ends.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Serves `routes` on `listener` with the edge settings and at most `cap` connections, until
/// `shutdown` completes; then stops accepting and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    edge: EdgeConfig,
    cap: usize,
    shutdown: impl Future<Output = ()>,
) {
    let epoch = Instant::now();
    let edge = Arc::new(edge);
    let slots = Arc::new(Semaphore::new(cap));
    let registry = Arc::new(Registry::default());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                backoff.reset();
                stream
            }
            Err(error) if is_per_connection(&error) => continue,
            Err(error) => {
                // Out of descriptors (or kernel memory): make room and retry shortly.
                let shed = registry.shed((registry.len() / 16).max(1));
                let pause = backoff.next();
                if backoff.first() {
                    tracing::warn!(
                        shed,
                        "cannot accept connections ({error}); closing idle connections and \
                         retrying every {} ms or less",
                        Backoff::MAX.as_millis()
                    );
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // At the cap: close an idle connection for this client, or wait for one.
                let permit = loop {
                    registry.shed(1);
                    tokio::select! {
                        () = &mut shutdown => break None,
                        permit = slots.clone().acquire_owned() => break permit.ok(),
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                };
                match permit {
                    Some(permit) => permit,
                    None => break,
                }
            }
        };
        let conn = Arc::new(Conn::new(epoch));
        let registered = registry.insert(conn.clone());
        let service = EdgeService {
            routes: routes.clone(),
            conn: conn.clone(),
            body_read_timeout: edge.body_read_timeout,
        };
        let edge = edge.clone();
        tokio::spawn(async move {
            connection::drive(stream, conn, service, &edge).await;
            drop(registered);
            drop(permit);
        });
    }
    drop(listener);
    registry.drain();
    let open = registry.len();
    if open > 0 {
        tracing::info!(
            connections = open,
            "finishing the requests in progress before stopping"
        );
    }
    // Every connection holds a slot until its task ends.
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// An `accept` error that concerns only the connection being accepted.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || error.raw_os_error() == Some(Errno::EPROTO as i32)
}

/// The pause after a failed `accept`: 5 ms, doubling to 500 ms.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const MAX: Duration = Duration::from_millis(500);

    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let pause = Duration::from_millis(5) * 2u32.saturating_pow(self.failures - 1).min(100);
        pause.min(Self::MAX)
    }

    /// The last failure was the first since a success.
    fn first(&self) -> bool {
        self.failures == 1
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest() {
        // A generous limit: the configured cap stands.
        assert_eq!(cap_for_limit(10_000, Some(1 << 20), 5), 10_000);
        // The common soft limit of 1024: 1024 - (32 + 32 + 8 * 10 + 128).
        assert_eq!(cap_for_limit(10_000, Some(1024), 10), 752);
        // A tiny limit still serves someone.
        assert_eq!(cap_for_limit(10_000, Some(64), 10), 1);
        assert_eq!(cap_for_limit(20, Some(1024), 10), 20);
        assert_eq!(cap_for_limit(20, None, 10), 20);
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<_> = (0..10).map(|_| b.next().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 500, 500, 500]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(5));
        assert!(b.first());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_shed_oldest_first_and_busy_ones_never() {
        let registry = Arc::new(Registry::default());
        let epoch = Instant::now();
        let conn = |phase: Phase| {
            let c = Arc::new(Conn::new(epoch));
            match phase {
                Phase::Busy => c.request_started(),
                Phase::Idle => c.request_done(),
                Phase::Fresh | Phase::Head => {}
            }
            c
        };
        let busy = conn(Phase::Busy);
        tokio::time::advance(Duration::from_secs(1)).await;
        let fresh_old = conn(Phase::Fresh);
        tokio::time::advance(Duration::from_secs(1)).await;
        let idle_new = conn(Phase::Idle);
        let _entries: Vec<_> = [&busy, &fresh_old, &idle_new]
            .into_iter()
            .map(|c| registry.insert(c.clone()))
            .collect();
        assert_eq!(registry.shed(1), 1);
        assert!(fresh_old.is_shed() && !idle_new.is_shed());
        assert_eq!(registry.shed(5), 1);
        assert!(idle_new.is_shed());
        assert_eq!(registry.shed(5), 0);
        assert!(!busy.is_shed());
        // Accepted in the same millisecond: the first accepted goes first.
        let first = conn(Phase::Fresh);
        let second = conn(Phase::Fresh);
        let _more = (
            registry.insert(first.clone()),
            registry.insert(second.clone()),
        );
        assert_eq!(registry.shed(1), 1);
        assert!(first.is_shed() && !second.is_shed());
    }
}
