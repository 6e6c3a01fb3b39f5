//! What to publish, decided from what was published before: deadband and heartbeat per point,
//! the device state's latest values (a point that failed to read leaves them: values are never
//! invented), and availability with `offline_after`. Pure: time comes in as an argument, so
//! every rule is tested without waiting.

use std::time::{Duration, Instant};

use crate::model::Value;

/// A point's publishing rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishRule {
    /// Publish only when the value moved at least this much since the last published one
    /// (0: any change).
    pub deadband: f64,
    /// Publish an unchanged value again after this long.
    pub heartbeat: Option<Duration>,
}

/// Should `new` be published on the sensor topic, given what was published last and when?
pub fn should_publish(
    last: Option<&(Value, Instant)>,
    new: &Value,
    rule: PublishRule,
    now: Instant,
) -> bool {
    let Some((prev, at)) = last else {
        return true;
    };
    if let Some(hb) = rule.heartbeat {
        if now.saturating_duration_since(*at) >= hb {
            return true;
        }
    }
    match (prev.as_f64(), new.as_f64()) {
        (Some(a), Some(b)) if rule.deadband > 0.0 => (b - a).abs() >= rule.deadband,
        _ => prev != new,
    }
}

/// The last published value of each point of one device, and the latest value of each (for the
/// retained state, which always carries the newest reading even when the sensor topic held back).
/// Points are numbered `0..points`; the caller knows their names.
#[derive(Debug)]
pub struct DeviceState {
    published: Vec<Option<(Value, Instant)>>,
    latest: Vec<Option<Value>>,
    /// The next `apply` sends the state even if nothing changed (`refresh`; and before the
    /// first one, which sends it whatever it brings).
    force_state: bool,
}

/// What one poll's values call for.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Points to publish on their sensor topics.
    pub sensors: Vec<(usize, Value)>,
    /// Whether the retained device state must be published again.
    pub state: bool,
}

impl DeviceState {
    /// The state of a device with `points` points, none read yet.
    pub fn new(points: usize) -> Self {
        DeviceState {
            published: vec![None; points],
            latest: vec![None; points],
            force_state: true,
        }
    }

    /// Applies one poll's values, and the points it failed to read (`failed`), which leave the
    /// state until they read again — Home Assistant shows them unknown — and whose next value
    /// is published whatever the deadband. Returns what to publish.
    pub fn apply(
        &mut self,
        values: Vec<(usize, Value, PublishRule)>,
        failed: &[usize],
        now: Instant,
    ) -> Decision {
        let mut d = Decision::default();
        // After every `apply` the state sent is the latest (or it is forced out again), so the
        // state is due exactly when this one changes the latest values.
        let mut changed = self.force_state;
        for &point in failed {
            if let Some(latest) = self.latest.get_mut(point) {
                changed |= latest.take().is_some();
            }
            if let Some(published) = self.published.get_mut(point) {
                *published = None;
            }
        }
        for (point, value, rule) in values {
            let (Some(published), Some(latest)) =
                (self.published.get_mut(point), self.latest.get_mut(point))
            else {
                continue;
            };
            if should_publish(published.as_ref(), &value, rule, now) {
                *published = Some((value.clone(), now));
                d.sensors.push((point, value.clone()));
            }
            if latest.as_ref() != Some(&value) {
                *latest = Some(value);
                changed = true;
            }
        }
        d.state = !d.sensors.is_empty() || changed;
        self.force_state = false;
        d
    }

    /// Makes the next `apply` publish the state even if nothing changed (`refresh`).
    pub fn force_state(&mut self) {
        self.force_state = true;
    }

    /// The newest value of every point, by index (`None`: not read, or failed since).
    pub fn latest(&self) -> &[Option<Value>] {
        &self.latest
    }
}

/// Availability of a device, from its polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    offline_after: u32,
    failures: u32,
    /// `None` until the first good read or the first `offline_after` failures.
    online: Option<bool>,
}

/// A change of availability to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Online,
    Offline,
}

impl Availability {
    pub fn new(offline_after: u32) -> Self {
        Availability {
            offline_after: offline_after.max(1),
            failures: 0,
            online: None,
        }
    }

    /// A poll in which the device answered.
    pub fn success(&mut self) -> Option<Change> {
        self.failures = 0;
        if self.online == Some(true) {
            None
        } else {
            self.online = Some(true);
            Some(Change::Online)
        }
    }

    /// A poll in which the device did not answer.
    pub fn failure(&mut self) -> Option<Change> {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.offline_after && self.online != Some(false) {
            self.online = Some(false);
            Some(Change::Offline)
        } else {
            None
        }
    }

    pub fn is_offline(&self) -> bool {
        self.online == Some(false)
    }

    pub fn is_online(&self) -> bool {
        self.online == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn rule(deadband: f64, heartbeat: Option<u64>) -> PublishRule {
        PublishRule {
            deadband,
            heartbeat: heartbeat.map(Duration::from_secs),
        }
    }

    #[test]
    fn deadband_holds_small_moves_until_the_heartbeat() {
        let t0 = Instant::now();
        let r = rule(0.5, Some(60));
        let last = (Value::Float(20.0), t0);
        assert!(!should_publish(Some(&last), &Value::Float(20.4), r, t0 + T));
        assert!(should_publish(Some(&last), &Value::Float(20.5), r, t0 + T));
        assert!(should_publish(Some(&last), &Value::Float(19.4), r, t0 + T));
        assert!(should_publish(
            Some(&last),
            &Value::Float(20.1),
            r,
            t0 + 60 * T
        ));
        assert!(should_publish(None, &Value::Float(20.1), r, t0));
    }

    #[test]
    fn without_deadband_only_changes_are_published() {
        let t0 = Instant::now();
        let r = rule(0.0, None);
        let last = (Value::Text("on".into()), t0);
        assert!(!should_publish(
            Some(&last),
            &Value::Text("on".into()),
            r,
            t0 + 100 * T
        ));
        assert!(should_publish(
            Some(&last),
            &Value::Text("off".into()),
            r,
            t0 + T
        ));
    }

    #[test]
    fn state_carries_the_latest_value_even_inside_the_deadband() {
        let t0 = Instant::now();
        let mut s = DeviceState::new(1);
        let r = rule(1.0, None);
        let d = s.apply(vec![(0, Value::Float(20.0), r)], &[], t0);
        assert_eq!(d.sensors.len(), 1);
        assert!(d.state);
        let d = s.apply(vec![(0, Value::Float(20.3), r)], &[], t0 + T);
        assert!(d.sensors.is_empty());
        assert!(d.state, "state must move to 20.3");
        assert_eq!(s.latest()[0], Some(Value::Float(20.3)));
        let d = s.apply(vec![(0, Value::Float(20.3), r)], &[], t0 + 2 * T);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn a_failed_point_leaves_the_state_and_its_next_value_is_published() {
        let t0 = Instant::now();
        let mut s = DeviceState::new(2);
        let r = rule(5.0, None);
        // Points `a` (0) and `b` (1).
        let both = |a: f64, b: f64| vec![(0, Value::Float(a), r), (1, Value::Float(b), r)];
        s.apply(both(1.0, 2.0), &[], t0);
        // `b` fails, `a` reads: the state loses `b`, nothing is published for it.
        let d = s.apply(vec![(0, Value::Float(1.1), r)], &[1], t0 + T);
        assert!(d.sensors.is_empty());
        assert!(d.state);
        assert_eq!(s.latest()[1], None);
        // A failed point that fails again changes nothing.
        let d = s.apply(vec![(0, Value::Float(1.1), r)], &[1], t0 + T);
        assert_eq!(d, Decision::default());
        // Back, inside the deadband of its last published value: published all the same.
        let d = s.apply(both(1.1, 2.1), &[], t0 + 2 * T);
        assert_eq!(d.sensors, vec![(1, Value::Float(2.1))]);
        assert_eq!(s.latest()[1], Some(Value::Float(2.1)));
    }

    #[test]
    fn offline_after_exactly_n_failures_and_online_on_the_next_success() {
        let mut a = Availability::new(3);
        assert_eq!(a.failure(), None);
        assert_eq!(a.failure(), None);
        assert_eq!(a.failure(), Some(Change::Offline));
        assert_eq!(a.failure(), None);
        assert_eq!(a.success(), Some(Change::Online));
        assert_eq!(a.success(), None);
        assert_eq!(a.failure(), None);
    }
}
