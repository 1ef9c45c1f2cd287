//! The pool of idle upstream streams kept for reuse.
//!
//! A stream is checked when it is taken (its idle timeout, and whether the peer closed it or
//! sent data while it waited), and every idle stream is checked once a second by one sweeping
//! task per pool, which closes those whose peer closed them or whose timeout passed. No task
//! watches a stream while it waits: returning a stream to the pool and taking it again cost a
//! lock and a vector operation each, where a task per release (spawned, polled, woken and
//! torn down on every reuse, with the channels that tell it its stream was taken) cost several
//! thousand instructions per proxied request. The price is that a stream its peer closed stays
//! open, unused, until the next sweep or until it is taken (and then refused).

use super::PoolCallback;
use crate::protocols::Stream;
use futures::future::FutureExt;
use log::{debug, warn};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How often the idle streams are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

/// Hashes a reuse key, already a hash of its peer, to itself: a put and a take each hash one key,
/// and SipHash over it cost more than the rest of the lookup.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for a `u64` key; anything else is folded in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

#[derive(Default)]
struct Streams {
    /// Per reuse key, oldest first: a stream is taken from the back (the most recently used,
    /// whose peer is the least likely to have closed it).
    by_key: HashMap<u64, VecDeque<Idle>, std::hash::BuildHasherDefault<KeyHasher>>,
    len: usize,
}

impl Streams {
    /// Remove the least recently returned stream of all keys.
    fn pop_oldest(&mut self) -> Option<Idle> {
        let key = self
            .by_key
            .iter()
            .filter_map(|(k, q)| q.front().map(|i| (*k, i.since)))
            .min_by_key(|(_, since)| *since)?
            .0;
        let queue = self.by_key.get_mut(&key)?;
        let oldest = queue.pop_front();
        if queue.is_empty() {
            self.by_key.remove(&key);
        }
        self.len -= oldest.is_some() as usize;
        oldest
    }
}

/// Idle upstream streams by reuse key, at most `capacity` of them (the least recently returned
/// goes first when it is full).
pub(crate) struct IdlePool {
    capacity: usize,
    streams: Mutex<Streams>,
    sweeping: AtomicBool,
    callback: Option<PoolCallback>,
    unexpected_data: Arc<AtomicU64>,
}

impl IdlePool {
    pub(crate) fn new(
        capacity: usize,
        callback: Option<PoolCallback>,
        unexpected_data: Arc<AtomicU64>,
    ) -> Arc<Self> {
        Arc::new(IdlePool {
            capacity,
            streams: Mutex::new(Streams::default()),
            sweeping: AtomicBool::new(false),
            callback,
            unexpected_data,
        })
    }

    /// Keep `stream` for reuse under `key`, for at most `timeout` (`None`: until the pool needs
    /// room or its peer closes it). The caller checked that it is reusable.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, timeout: Option<Duration>) {
        if self.capacity == 0 || timeout.is_some_and(|t| t.is_zero()) {
            return;
        }
        let evicted = {
            let mut s = self.streams.lock();
            let evicted = if s.len >= self.capacity {
                s.pop_oldest()
            } else {
                None
            };
            s.by_key.entry(key).or_default().push_back(Idle {
                stream,
                since: Instant::now(),
                timeout,
            });
            s.len += 1;
            evicted
        };
        // Closed outside the lock.
        if let Some(idle) = evicted {
            debug!("idle connection evicted to make room in the pool");
            self.left_unused(idle, Instant::now());
        }
        if !self.sweeping.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::AcqRel)
        {
            let pool = Arc::downgrade(self);
            pingora_runtime::current_handle().spawn(sweep(pool));
        }
    }

    /// The most recently returned stream under `key` that has not timed out, if any; expired
    /// ones met on the way are closed. The caller checks the one returned before using it.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut s = self.streams.lock();
            let mut found = None;
            let mut taken = 0;
            if let Some(queue) = s.by_key.get_mut(&key) {
                while let Some(idle) = queue.pop_back() {
                    taken += 1;
                    if idle.expired(now) {
                        expired.push(idle);
                    } else {
                        found = Some(idle.stream);
                        break;
                    }
                }
                if queue.is_empty() {
                    s.by_key.remove(&key);
                }
            }
            s.len -= taken;
            found
        };
        for idle in expired {
            debug!("idle connection closed by the pool: its idle timeout passed");
            self.left_unused(idle, now);
        }
        found
    }

    /// Close the idle streams whose timeout passed or whose peer closed them (or sent data).
    fn sweep(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut s = self.streams.lock();
            let mut removed = 0;
            s.by_key.retain(|_, queue| {
                let before = queue.len();
                // In order, so that the oldest stay at the front.
                let mut i = 0;
                while i < queue.len() {
                    let idle = &mut queue[i];
                    if idle.expired(now) || !still_idle(&mut idle.stream, &self.unexpected_data)
                    {
                        closed.extend(queue.remove(i));
                    } else {
                        i += 1;
                    }
                }
                removed += before - queue.len();
                !queue.is_empty()
            });
            s.len -= removed;
        }
        for idle in closed {
            debug!("idle connection closed by the pool: timed out, or closed by its peer");
            self.left_unused(idle, now);
        }
    }

    /// An idle stream leaves the pool without being reused (evicted, timed out, or closed by
    /// its peer): the pool's callback hears how long it waited, and the stream is closed.
    fn left_unused(&self, idle: Idle, now: Instant) {
        if let Some(callback) = &self.callback {
            callback(now.saturating_duration_since(idle.since));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.streams.lock().len
    }
}

async fn sweep(pool: Weak<IdlePool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

/// Whether an idle stream can still be used: its peer has neither closed it nor sent anything
/// (a server never speaks first on an idle connection). Reads only what the runtime already
/// knows is there: a stream with nothing to read costs no system call.
pub(crate) fn still_idle(stream: &mut Stream, unexpected_data: &AtomicU64) -> bool {
    let mut buf = [0; 1];
    // tokio::task::unconstrained because now_or_never may yield None when the future is ready
    let result = tokio::task::unconstrained(stream.read(&mut buf[..])).now_or_never();
    match result {
        None => true,
        Some(Ok(0)) => {
            debug!("Idle connection is closed");
            false
        }
        Some(Ok(_)) => {
            warn!("Unexpected data read in idle connection");
            unexpected_data.fetch_add(1, Ordering::Relaxed);
            false
        }
        Some(Err(e)) => {
            debug!("Idle connection is broken: {e:?}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    /// A stream for the pool, its peer's end, and an id written into it to tell streams apart.
    fn pair(id: u8) -> (Stream, DuplexStream, u8) {
        let (client, server) = tokio::io::duplex(64);
        (Box::new(client), server, id)
    }

    /// Which stream this is: the peer writes its id, the stream reads it.
    async fn id_of(stream: &mut Stream, peers: &mut [(DuplexStream, u8)]) -> u8 {
        for (peer, id) in peers.iter_mut() {
            peer.write_all(&[*id]).await.unwrap();
        }
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.unwrap();
        b[0]
    }

    fn pool(capacity: usize) -> (Arc<IdlePool>, Arc<std::sync::Mutex<Vec<Duration>>>) {
        let closed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = closed.clone();
        let callback: PoolCallback = Arc::new(move |d| seen.lock().unwrap().push(d));
        let pool = IdlePool::new(capacity, Some(callback), Arc::new(AtomicU64::new(0)));
        (pool, closed)
    }

    #[tokio::test]
    async fn the_most_recently_returned_stream_of_a_key_is_taken_first() {
        let (pool, _) = pool(8);
        let mut peers = Vec::new();
        for (key, id) in [(1, 10), (1, 11), (2, 20)] {
            let (s, peer, id) = pair(id);
            peers.push((peer, id));
            pool.put(key, s, None);
        }
        assert_eq!(pool.len(), 3);
        assert!(pool.take(3).is_none());
        let mut s = pool.take(1).unwrap();
        // Only the taken stream reads: each peer writes its id; the one read is this one's.
        assert_eq!(id_of(&mut s, &mut peers[1..2]).await, 11);
        let mut s = pool.take(1).unwrap();
        assert_eq!(id_of(&mut s, &mut peers[0..1]).await, 10);
        assert!(pool.take(1).is_none());
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn a_full_pool_lets_the_least_recently_returned_stream_go() {
        let (pool, closed) = pool(2);
        let mut peers = Vec::new();
        for (key, id) in [(1, 10), (2, 20), (2, 21)] {
            let (s, peer, id) = pair(id);
            peers.push((peer, id));
            pool.put(key, s, None);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(pool.len(), 2);
        // Key 1's stream was the oldest: evicted (and closed: its peer reads the end).
        assert!(pool.take(1).is_none());
        let mut b = [0u8; 1];
        assert_eq!(peers[0].0.read(&mut b).await.unwrap(), 0);
        // It left the pool unused: the callback heard of it.
        assert_eq!(closed.lock().unwrap().len(), 1);
        assert!(pool.take(2).is_some());
        assert!(pool.take(2).is_some());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn a_stream_past_its_idle_timeout_is_not_taken() {
        let (pool, closed) = pool(8);
        let (old, _old_peer, _) = pair(1);
        let (fresh, _fresh_peer, _) = pair(2);
        pool.put(1, old, Some(Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(pool.take(1).is_none(), "an expired stream was offered");
        assert_eq!(closed.lock().unwrap().len(), 1);
        pool.put(1, fresh, Some(Duration::from_secs(60)));
        assert!(pool.take(1).is_some());
        // A zero timeout keeps nothing.
        let (s, _p, _) = pair(3);
        pool.put(1, s, Some(Duration::ZERO));
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn the_sweep_closes_streams_their_peers_closed_or_wrote_to_and_expired_ones() {
        let (pool, closed) = pool(8);
        let (quiet, _quiet_peer, _) = pair(1);
        let (hung_up, hung_up_peer, _) = pair(2);
        let (chatty, mut chatty_peer, _) = pair(3);
        let (expiring, _expiring_peer, _) = pair(4);
        pool.put(1, quiet, None);
        pool.put(1, hung_up, None);
        pool.put(2, chatty, None);
        pool.put(3, expiring, Some(Duration::from_millis(1)));
        drop(hung_up_peer);
        chatty_peer.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        pool.sweep();
        assert_eq!(pool.len(), 1, "only the quiet stream stays");
        assert_eq!(closed.lock().unwrap().len(), 3);
        assert_eq!(pool.unexpected_data.load(Ordering::Relaxed), 1);
        assert!(pool.take(1).is_some());
    }

    #[tokio::test]
    async fn the_sweeping_task_runs_on_its_own() {
        let (pool, _) = pool(8);
        let (s, peer, _) = pair(1);
        pool.put(1, s, None);
        drop(peer);
        let deadline = Instant::now() + SWEEP_EVERY * 3;
        while pool.len() > 0 {
            assert!(Instant::now() < deadline, "no sweep closed the stream");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
