//! How the broker client paces and repeats its requests: at most `concurrency` in flight, at
//! most `rate` started per second, and a bounded repeat with jittered backoff where repeating
//! is safe (reads; any request the broker refused with 429 or 503, or that never left).
//!
//! Decides whether and when; sends nothing itself. Must never repeat a request whose effect
//! may already have happened: a login or a child creation that was sent and not answered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RequestKind;

/// Attempts per request at most, the first included.
pub const MAX_ATTEMPTS: u32 = 4;
/// The wait before the second attempt; doubled for each later one, then jittered.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait before an attempt, `Retry-After` included: the broker asking for a longer
/// one ends the request instead.
pub const LONGEST_WAIT: Duration = Duration::from_secs(10);

/// How many requests may be in flight and how fast they may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub concurrency: usize,
    /// The least time between two starts (one over the rate); `None`: no limit.
    pub spacing: Option<Duration>,
}

impl Limits {
    pub const DEFAULT_CONCURRENCY: usize = 16;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { concurrency: Limits::DEFAULT_CONCURRENCY, spacing: None }
    }
}

/// How one attempt ended, as far as repeating it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The broker declined (429 Too Many Requests, 503 Unavailable) and did nothing;
    /// `retry_after` is its `Retry-After`.
    Declined { retry_after: Option<Duration> },
    /// No connection was made, so nothing was sent.
    NotSent,
    /// Sent, and then no answer (timeout, connection lost) or a gateway's 502/504: whether the
    /// broker acted is not known.
    Unanswered,
    /// An answer that stands (success, refusal, bad request, …).
    Answered,
}

/// The wait before attempt `n + 1` of a request after attempt `n` (from 1) ended as `ended`;
/// `None`: no further attempt. Only a `safe` request (one whose repetition changes nothing: a
/// read) is repeated after an unanswered attempt. `jitter` in `[0, 1]` spreads requests that
/// were declined together over the upper half of the backoff.
pub fn next_wait(safe: bool, ended: Ended, n: u32, jitter: f64) -> Option<Duration> {
    let repeat = match ended {
        Ended::Declined { .. } | Ended::NotSent => true,
        Ended::Unanswered => safe,
        Ended::Answered => false,
    };
    if !repeat || n >= MAX_ATTEMPTS {
        return None;
    }
    let backoff = FIRST_BACKOFF.saturating_mul(1 << (n - 1).min(16)).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let wait = match ended {
        Ended::Declined { retry_after: Some(asked) } => asked.max(backoff),
        _ => backoff,
    };
    (wait <= LONGEST_WAIT).then_some(wait)
}

/// The in-flight bound, the start rate and the count of repeated requests of one broker
/// client (shared by its clones).
pub struct Pacer {
    in_flight: Arc<Semaphore>,
    /// With a rate: the least time between starts, and the earliest next start.
    spacing: Option<(Duration, tokio::sync::Mutex<Option<Instant>>)>,
    repeated: Mutex<BTreeMap<RequestKind, u64>>,
}

impl Pacer {
    pub fn new(limits: Limits) -> Pacer {
        let spacing = limits.spacing.filter(|s| !s.is_zero()).map(|s| (s, tokio::sync::Mutex::new(None)));
        Pacer { in_flight: Arc::new(Semaphore::new(limits.concurrency.max(1))), spacing, repeated: Mutex::new(BTreeMap::new()) }
    }

    /// Waits for a turn: a place among those in flight (held until the permit is dropped) and,
    /// with a rate, the moment this request may start.
    pub async fn turn(&self) -> OwnedSemaphorePermit {
        let permit = self.in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
        if let Some((interval, next)) = &self.spacing {
            let at = {
                let mut next = next.lock().await;
                let at = next.map_or_else(Instant::now, |n| n.max(Instant::now()));
                *next = Some(at + *interval);
                at
            };
            tokio::time::sleep_until(at).await;
        }
        permit
    }

    pub fn count_repeat(&self, kind: RequestKind) {
        *self.repeated.lock().unwrap_or_else(PoisonError::into_inner).entry(kind).or_insert(0) += 1;
    }

    /// Requests made again so far, by kind.
    pub fn repeats(&self) -> BTreeMap<RequestKind, u64> {
        self.repeated.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Sleeps `wait` (a backoff before a repeat) unless `cancel` fires first: shutdown does not wait
/// out a `Retry-After`. False when it was cut short.
pub async fn backoff(wait: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// `Retry-After` in seconds (the form Vault sends); an HTTP date is not honoured (the backoff
/// applies).
pub fn retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_safe_to_repeat_is_repeated() {
        let declined = Ended::Declined { retry_after: None };
        for safe in [true, false] {
            assert!(next_wait(safe, declined, 1, 0.5).is_some(), "a declined request did nothing: repeated");
            assert!(next_wait(safe, Ended::NotSent, 1, 0.5).is_some(), "nothing was sent: repeated");
            assert!(next_wait(safe, Ended::Answered, 1, 0.5).is_none(), "an answer stands");
        }
        assert!(next_wait(true, Ended::Unanswered, 1, 0.5).is_some(), "a read is repeated");
        assert!(next_wait(false, Ended::Unanswered, 1, 0.5).is_none(), "a login or child creation that may have happened is not");
    }

    #[test]
    fn attempts_are_bounded_and_back_off_with_jitter() {
        let declined = Ended::Declined { retry_after: None };
        let waits: Vec<Duration> = (1..MAX_ATTEMPTS).map(|n| next_wait(true, declined, n, 1.0).unwrap()).collect();
        assert_eq!(waits, [250, 500, 1000].map(Duration::from_millis));
        assert_eq!(next_wait(true, declined, 1, 0.0), Some(Duration::from_millis(125)));
        assert_eq!(next_wait(true, declined, MAX_ATTEMPTS, 0.5), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_wait() {
        let asked = |s| Ended::Declined { retry_after: Some(Duration::from_secs(s)) };
        assert_eq!(next_wait(false, asked(3), 1, 0.5), Some(Duration::from_secs(3)));
        assert_eq!(next_wait(false, asked(0), 1, 1.0), Some(Duration::from_millis(250)), "never sooner than the backoff");
        assert_eq!(next_wait(false, asked(LONGEST_WAIT.as_secs() + 1), 1, 0.5), None, "too long a wait ends the request");
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_ends_when_cancelled() {
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        assert!(backoff(Duration::from_millis(250), &cancel).await, "not cancelled: the whole wait");
        assert_eq!(Instant::now() - t0, Duration::from_millis(250));
        let waiting = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                let t0 = Instant::now();
                (backoff(LONGEST_WAIT, &cancel).await, Instant::now() - t0)
            }
        });
        tokio::task::yield_now().await;
        cancel.cancel();
        assert_eq!(waiting.await.unwrap(), (false, Duration::ZERO), "cut short at once, on the paused clock");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_spaces_the_starts() {
        let pacer = Pacer::new(Limits { concurrency: 8, spacing: Some(Duration::from_millis(100)) });
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..4 {
            drop(pacer.turn().await);
            starts.push(Instant::now() - t0);
        }
        assert_eq!(starts, [0, 100, 200, 300].map(Duration::from_millis));
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_concurrency_are_in_flight() {
        let pacer = Pacer::new(Limits { concurrency: 2, spacing: None });
        let a = pacer.turn().await;
        let _b = pacer.turn().await;
        assert!(tokio::time::timeout(Duration::from_secs(1), pacer.turn()).await.is_err(), "a third waits");
        drop(a);
        assert!(tokio::time::timeout(Duration::from_secs(1), pacer.turn()).await.is_ok(), "and goes once one ends");
    }
}
