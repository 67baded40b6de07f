//! Long-lived streams end when the token that opened them stops being valid: revoked (seen at
//! the next metadata change) or expired (a timer). A token checked once at connect time is not
//! enough for streams that run for days (`AgentConfig/Watch`, `Alerts/WatchAnomalies`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::Status;

use crate::auth::Caller;
use crate::engine::{Engine, now_micros};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Why `caller`'s token no longer holds, if it does not (`None` with auth off).
fn invalid_reason(engine: &Engine, caller: &Caller) -> Option<String> {
    let id = caller.token_id.as_deref()?;
    let state = engine.catalog_state();
    match state.tokens.get(id) {
        None => Some(format!("token {id} no longer exists")),
        Some(t) => crate::auth::no_longer_valid(t),
    }
}

/// `inner`, ended with UNAUTHENTICATED as soon as `caller`'s token is revoked or expires.
pub fn end_when_token_invalid<T: Send + 'static>(
    engine: Arc<Engine>,
    caller: Caller,
    inner: BoxStream<T>,
) -> BoxStream<T> {
    if caller.token_id.is_none() {
        return inner;
    }
    let changes = engine.watch_meta();
    let state = (engine, caller, changes, inner, false);
    Box::pin(futures::stream::unfold(
        state,
        |(engine, caller, mut changes, mut inner, ended)| async move {
            if ended {
                return None;
            }
            loop {
                // Wake at the expiry time too: nothing is committed when a token expires.
                let expiry = caller
                    .expires_micros
                    .map(|e| Duration::from_micros(e.saturating_sub(now_micros()).max(0) as u64))
                    .unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    item = inner.next() => {
                        let item = item?;
                        return Some((item, (engine, caller, changes, inner, false)));
                    }
                    changed = changes.changed() => if changed.is_err() { return None },
                    _ = tokio::time::sleep(expiry) => {}
                }
                if let Some(reason) = invalid_reason(&engine, &caller) {
                    tracing::info!(%reason, "ending a stream opened with this token");
                    let status = Status::unauthenticated(format!("{reason}: the stream ends"));
                    return Some((Err(status), (engine, caller, changes, inner, true)));
                }
            }
        },
    ))
}
