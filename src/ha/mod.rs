//! Home Assistant (README "Home Assistant"): what each point and
//! action becomes there, the discovery configs in device or entity mode, and which retained
//! configs on the broker are this gateway's to change.
//!
//! - [`component`]: the platform a point becomes; [`entity`]: the component and options of each point, action and `refresh`; [`templates`]
//!   the Jinja they carry, written for Home Assistant's Jinja2 (attribute before item).
//! - [`lint`]: a point's device class, unit and state class checked against Home Assistant's
//!   own tables ([`classes`], generated from the version the tests prove against); what it
//!   would refuse is left out and reported by `check` with its line.
//! - [`discovery`]: the configs of a whole config, the gateway's own device included.
//! - [`owner`]: whose a retained config is, and the order a change goes out in (mode
//!   migrations that keep entity ids).
//! - [`publisher`]: the running part: the start-up scan, re-publishing, reloads.

#[rustfmt::skip]
pub mod classes;
pub mod component;
pub mod discovery;
pub mod entity;
pub mod lint;
pub mod owner;
pub mod publisher;
pub mod templates;

pub use entity::Component;
pub use publisher::Publisher;
