//! When a failed attempt goes to another backend: the one retry rule of the proxy and the simulator.
//!
//! The rule follows what has already happened to the request, not the method alone:
//!
//! - a connection that was never established carried nothing, so any method may go elsewhere;
//! - a backend that answered 502, 503 or 504 has its answer held back from the client, so an
//!   idempotent request (RFC 9110 §9.2.2) whose body is still buffered may be replayed;
//! - a failure after the request was sent (timeout, reset, broken response) may be replayed only
//!   for an idempotent request whose body is still buffered and of whose response nothing has
//!   reached the client.
//!
//! Every retry also needs budget: at most `retries` attempts beyond the first.

/// How one attempt against a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The connection could not be established: nothing reached the backend.
    Connect,
    /// The backend answered with a status [`is_retryable_status`] accepts, and that answer has
    /// not been passed to the client.
    RetryableStatus,
    /// The request reached the backend, then the attempt failed (timeout, reset, a response that
    /// could not be read).
    AfterRequestSent,
}

/// What is known about the request when one of its attempts fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryContext {
    /// The method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub idempotent: bool,
    /// The whole request body is still held, so it can be sent again.
    pub body_replayable: bool,
    /// Part of this attempt's response was accepted or already sent to the client.
    pub response_started: bool,
    /// Attempts made so far, the failed one included (the first attempt is 1).
    pub attempts: u32,
    /// The pool's retry budget: attempts allowed beyond the first.
    pub retries: u32,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try another backend.
    RetryElsewhere,
    /// Give the client this attempt's answer or error.
    Answer,
}

/// Statuses answered by an unavailable or overloaded backend rather than about the request:
/// 502, 503 and 504.
#[inline]
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 502..=504)
}

impl RetryContext {
    /// Whether the pool's budget allows another attempt.
    #[inline]
    pub fn has_budget(&self) -> bool {
        self.attempts <= self.retries
    }
}

/// Decide whether a request whose attempt failed with `failure` goes to another backend.
pub fn decide(failure: AttemptFailure, ctx: &RetryContext) -> RetryDecision {
    let safe = match failure {
        AttemptFailure::Connect => true,
        AttemptFailure::RetryableStatus => ctx.idempotent && ctx.body_replayable,
        AttemptFailure::AfterRequestSent => {
            ctx.idempotent && ctx.body_replayable && !ctx.response_started
        }
    };
    if safe && ctx.has_budget() {
        RetryDecision::RetryElsewhere
    } else {
        RetryDecision::Answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttemptFailure::*;
    use RetryDecision::*;

    fn ctx(idempotent: bool, attempts: u32) -> RetryContext {
        RetryContext {
            idempotent,
            body_replayable: true,
            response_started: false,
            attempts,
            retries: 2,
        }
    }

    #[test]
    fn connect_failures_retry_any_method_within_budget() {
        assert_eq!(decide(Connect, &ctx(false, 1)), RetryElsewhere);
        assert_eq!(decide(Connect, &ctx(true, 2)), RetryElsewhere);
        assert_eq!(decide(Connect, &ctx(true, 3)), Answer);
    }

    #[test]
    fn retryable_status_only_for_idempotent_replayable_requests() {
        assert_eq!(decide(RetryableStatus, &ctx(true, 1)), RetryElsewhere);
        assert_eq!(decide(RetryableStatus, &ctx(false, 1)), Answer);
        let truncated = RetryContext {
            body_replayable: false,
            ..ctx(true, 1)
        };
        assert_eq!(decide(RetryableStatus, &truncated), Answer);
        assert_eq!(decide(RetryableStatus, &ctx(true, 3)), Answer);
    }

    #[test]
    fn failures_after_send_need_an_untouched_response() {
        assert_eq!(decide(AfterRequestSent, &ctx(true, 1)), RetryElsewhere);
        assert_eq!(decide(AfterRequestSent, &ctx(false, 1)), Answer);
        let started = RetryContext {
            response_started: true,
            ..ctx(true, 1)
        };
        assert_eq!(decide(AfterRequestSent, &started), Answer);
    }

    #[test]
    fn zero_budget_never_retries() {
        let none = RetryContext {
            retries: 0,
            ..ctx(true, 1)
        };
        for f in [Connect, RetryableStatus, AfterRequestSent] {
            assert_eq!(decide(f, &none), Answer, "{f:?}");
        }
    }

    #[test]
    fn retryable_statuses() {
        for s in [502, 503, 504] {
            assert!(is_retryable_status(s));
        }
        for s in [200, 404, 500, 501, 505] {
            assert!(!is_retryable_status(s));
        }
    }
}
