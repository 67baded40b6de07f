//! Prepared statements: SQL text plus the parameters bound to it with `DoPut`, each owned by
//! the token that created it.
//!
//! Bounded so that no client can grow the server's memory or push out another client's
//! statements: at most `total` open statements, at most `per_token` for one token, and a
//! statement one token made cannot be seen, bound or closed with another token.

use std::collections::HashMap;
use std::time::Instant;

use datafusion::scalar::ScalarValue;
use parking_lot::Mutex;
use tonic::Status;

/// The limits, from `--max-prepared-statements`, `--max-prepared-statements-per-token` and
/// `--max-parameter-bytes`.
#[derive(Debug, Clone, Copy)]
pub struct PreparedLimits {
    pub total: usize,
    pub per_token: usize,
    pub parameter_bytes: usize,
}

impl Default for PreparedLimits {
    fn default() -> Self {
        Self {
            total: 4096,
            per_token: 256,
            parameter_bytes: 1 << 20,
        }
    }
}

/// Who made a statement: a token id, or `None` with authentication off.
pub type Owner = Option<String>;

#[derive(Debug, Clone)]
pub struct Prepared {
    pub sql: String,
    /// Bound parameter values, `$1` first.
    pub params: Option<Vec<ScalarValue>>,
    owner: Owner,
    last_used: Instant,
}

#[derive(Debug, Default)]
pub struct PreparedStatements {
    limits: PreparedLimits,
    by_handle: Mutex<HashMap<String, Prepared>>,
}

impl PreparedStatements {
    pub fn new(limits: PreparedLimits) -> Self {
        Self {
            limits,
            by_handle: Mutex::default(),
        }
    }

    pub fn limits(&self) -> PreparedLimits {
        self.limits
    }

    /// Opens a statement for `owner`, or says which limit is reached.
    pub fn insert(&self, owner: Owner, sql: String) -> Result<String, Status> {
        let mut m = self.by_handle.lock();
        if m.len() >= self.limits.total {
            return Err(Status::resource_exhausted(format!(
                "{} prepared statements are open on this server (--max-prepared-statements); close some first",
                m.len()
            )));
        }
        let owned = m.values().filter(|p| p.owner == owner).count();
        if owned >= self.limits.per_token {
            return Err(Status::resource_exhausted(format!(
                "this token has {owned} prepared statements open (--max-prepared-statements-per-token); close some first"
            )));
        }
        let handle = uuid::Uuid::new_v4().to_string();
        m.insert(
            handle.clone(),
            Prepared {
                sql,
                params: None,
                owner,
                last_used: Instant::now(),
            },
        );
        Ok(handle)
    }

    /// The statement `handle` if `owner` made it.
    pub fn get(&self, owner: &Owner, handle: &str) -> Option<Prepared> {
        let mut m = self.by_handle.lock();
        let p = m.get_mut(handle).filter(|p| &p.owner == owner)?;
        p.last_used = Instant::now();
        Some(p.clone())
    }

    pub fn bind(&self, owner: &Owner, handle: &str, params: Vec<ScalarValue>) -> bool {
        let mut m = self.by_handle.lock();
        let Some(p) = m.get_mut(handle).filter(|p| &p.owner == owner) else {
            return false;
        };
        p.params = Some(params);
        p.last_used = Instant::now();
        true
    }

    pub fn remove(&self, owner: &Owner, handle: &str) -> bool {
        let mut m = self.by_handle.lock();
        if m.get(handle).is_some_and(|p| &p.owner == owner) {
            m.remove(handle);
            return true;
        }
        false
    }

    /// Statements open now.
    pub fn len(&self) -> usize {
        self.by_handle.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_token: usize) -> PreparedStatements {
        PreparedStatements::new(PreparedLimits {
            total,
            per_token,
            parameter_bytes: 1024,
        })
    }

    #[test]
    fn one_token_cannot_fill_the_server_or_touch_anothers_statements() {
        let p = limits(3, 2);
        let a: Owner = Some("a".into());
        let b: Owner = Some("b".into());
        let a1 = p.insert(a.clone(), "SELECT 1".into()).unwrap();
        p.insert(a.clone(), "SELECT 2".into()).unwrap();
        let err = p.insert(a.clone(), "SELECT 3".into()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("per-token"), "{}", err.message());
        // b still has room, and cannot see, bind or close a's statement.
        let b1 = p.insert(b.clone(), "SELECT 4".into()).unwrap();
        assert!(p.get(&b, &a1).is_none());
        assert!(!p.bind(&b, &a1, vec![]));
        assert!(!p.remove(&b, &a1));
        assert!(p.get(&a, &a1).is_some());
        // The server is full now.
        let err = p.insert(b.clone(), "SELECT 5".into()).unwrap_err();
        assert!(
            err.message().contains("--max-prepared-statements)"),
            "{}",
            err.message()
        );
        assert!(p.remove(&b, &b1));
        assert_eq!(p.len(), 2);
    }
}
