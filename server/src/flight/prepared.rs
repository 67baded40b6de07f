//! Prepared statements: SQL text plus the parameters bound to it with `DoPut`.

use std::collections::HashMap;
use std::time::Instant;

use datafusion::scalar::ScalarValue;
use parking_lot::Mutex;

/// Statements kept at most; the least recently used is dropped beyond that.
const MAX_PREPARED: usize = 4096;

#[derive(Debug, Clone)]
pub struct Prepared {
    pub sql: String,
    /// Bound parameter values, `$1` first.
    pub params: Option<Vec<ScalarValue>>,
    last_used: Instant,
}

#[derive(Debug, Default)]
pub struct PreparedStatements {
    by_handle: Mutex<HashMap<String, Prepared>>,
}

impl PreparedStatements {
    pub fn insert(&self, sql: String) -> String {
        let handle = uuid::Uuid::new_v4().to_string();
        let mut m = self.by_handle.lock();
        if m.len() >= MAX_PREPARED
            && let Some(oldest) = m
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(h, _)| h.clone())
        {
            m.remove(&oldest);
        }
        m.insert(
            handle.clone(),
            Prepared {
                sql,
                params: None,
                last_used: Instant::now(),
            },
        );
        handle
    }

    pub fn get(&self, handle: &str) -> Option<Prepared> {
        let mut m = self.by_handle.lock();
        let p = m.get_mut(handle)?;
        p.last_used = Instant::now();
        Some(p.clone())
    }

    pub fn bind(&self, handle: &str, params: Vec<ScalarValue>) -> bool {
        let mut m = self.by_handle.lock();
        let Some(p) = m.get_mut(handle) else {
            return false;
        };
        p.params = Some(params);
        p.last_used = Instant::now();
        true
    }

    pub fn remove(&self, handle: &str) -> bool {
        self.by_handle.lock().remove(handle).is_some()
    }
}
