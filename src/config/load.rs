//! Reading the config: the file, the profiles beside it, extraction (`extract.rs`), the
//! cross-checks (`validate.rs`) and the warnings, in that order.

use std::path::Path;

use super::error::{ConfigError, ConfigErrors};
use super::extract::parse_document;
use super::{Config, Profiles};

/// Reads, parses and validates the config at `path`, with the built-in profiles and the user's
/// in `profiles/` beside it. Errors of the profile files come first, then the config's.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let (profiles, mut errors) = Profiles::load(&super::profiles_dir(path));
    let parsed = match std::fs::read_to_string(path) {
        Ok(text) => parse_with(&text, path, &profiles),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config: {e}"),
        }])),
    };
    match parsed {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            errors.extend(e.0);
            Err(ConfigErrors(errors))
        }
    }
}

/// Parses and validates config text with the built-in profiles only; `path` is used in messages
/// and stored in the result.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    match Profiles::builtin() {
        Ok(profiles) => parse_with(text, path, profiles),
        Err(e) => Err(e.clone()),
    }
}

/// Parses and validates config text; devices may name any of `profiles`.
pub fn parse_with(text: &str, path: &Path, profiles: &Profiles) -> Result<Config, ConfigErrors> {
    parse_document(text, path, |cx, root| {
        let mut config = cx.config(root, path, profiles);
        if cx.is_clean() {
            super::validate::validate(&config, cx);
        }
        if cx.is_clean() {
            // What Home Assistant would refuse: not an error (the gateway works without it),
            // but said with the line, and left out of the discovery config.
            config.warnings = crate::ha::lint::config(&config)
                .into_iter()
                .map(|(key, message)| {
                    let span = cx.span_of(&key);
                    cx.located(span, &key, message)
                })
                .collect();
            if config.gateway.generic_id {
                let span = cx.span_of("gateway");
                let message = format!(
                    "the gateway id defaults to the host name \"{}\", which every machine of its kind has: two such gateways on one broker share a client id and Home Assistant ids; set [gateway] id = \"…\" (a name of this gateway's own)",
                    config.gateway.id
                );
                config
                    .warnings
                    .push(cx.located(span, "gateway.id", message));
            }
            config.warnings.sort_by_key(|w| (w.line, w.column));
        }
        config
    })
}
