//! The `per_session` children one caller holds (`max_children_per_caller`): a count per
//! caller (identity, else client address), taken with each child and given back when the
//! child's link is dropped, so one client cannot hold every child of an upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The children each caller holds of one upstream, and the most one may hold.
pub struct PerCaller {
    max: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One child held by a caller; dropping it gives the place back.
pub struct CallerSlot {
    held: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl PerCaller {
    pub fn new(max: u32) -> Self {
        Self {
            max: max as usize,
            held: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more child of `caller`, unless it holds its maximum already.
    pub fn take(&self, caller: &str) -> Option<CallerSlot> {
        let mut held = self.held.lock().expect("callers lock");
        let n = held.entry(caller.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(CallerSlot {
            held: self.held.clone(),
            caller: caller.to_owned(),
        })
    }

    /// How many children `caller` holds now.
    #[cfg(test)]
    pub fn held(&self, caller: &str) -> usize {
        let held = self.held.lock().expect("callers lock");
        held.get(caller).copied().unwrap_or(0)
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("callers lock");
        if let Some(n) = held.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PerCaller;

    #[test]
    fn each_caller_holds_at_most_its_share_and_gets_it_back() {
        let p = PerCaller::new(2);
        let a1 = p.take("addr:10.0.0.1").expect("first");
        let _a2 = p.take("addr:10.0.0.1").expect("second");
        assert!(p.take("addr:10.0.0.1").is_none(), "a third is refused");
        let _b = p.take("id:alice").expect("another caller is not affected");
        drop(a1);
        assert_eq!(p.held("addr:10.0.0.1"), 1);
        assert!(
            p.take("addr:10.0.0.1").is_some(),
            "a place given back is free"
        );
    }
}
