//! Device profiles (README "Device profiles"): a named set of points and actions for one device model, in the
//! same TOML form as a device's `points` and `actions`, read by the same extraction
//! (`points.rs`), so a profile file gets the config's rules and `file:line:col` messages.
//!
//! Built-in profiles are the files under `profiles/` in the repository, compiled in (`build.rs`
//! lists them). The user's profiles are `profiles/*.toml` beside the config file — with the
//! default config, `/etc/fieldbridge/profiles/` — and shadow a built-in of the same name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use toml::de::DeValue;

use super::error::{ConfigError, ConfigErrors};
use super::extract::{Extractor, Section, parse_document};
use super::*;

// `BUILTIN: &[(&str, &str)]`: (file name, text) of every `profiles/*.toml`, from `build.rs`.
include!(concat!(env!("OUT_DIR"), "/builtin_profiles.rs"));

/// Where a profile came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Compiled in from `profiles/<file>` of the repository.
    BuiltIn(String),
    /// A file of the user's profiles directory.
    File(PathBuf),
}

impl std::fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileSource::BuiltIn(file) => write!(f, "built in (profiles/{file})"),
            ProfileSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The published document a profile's register map was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileDocument {
    pub title: String,
    /// Version, revision or issue, as the document names it.
    pub version: Option<String>,
    /// Publication date, as the document gives it.
    pub date: Option<String>,
    /// Where it was published, when known.
    pub url: Option<String>,
}

impl std::fmt::Display for ProfileDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.title)?;
        if let Some(v) = &self.version {
            write!(f, ", {v}")?;
        }
        if let Some(d) = &self.date {
            write!(f, ", {d}")?;
        }
        Ok(())
    }
}

/// How `scan --identify` recognises the model: case-insensitive substrings of what the device
/// reports (FC 43/14 VendorName and ProductCode, or the FC 17 server id text). Default: the
/// profile's `manufacturer` and `model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileIdentify {
    pub vendor: String,
    pub product: String,
}

/// One device profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    /// One line for people.
    pub description: Option<String>,
    pub document: ProfileDocument,
    /// The bus kinds the device has (informational, except Modbus vs serial: a Modbus profile
    /// works through any Modbus bus kind, e.g. an RTU meter behind a TCP gateway).
    pub buses: Vec<BusKind>,
    /// Default poll period of devices using it.
    pub poll: Option<Duration>,
    /// Word order of points that set none (the device's convention).
    pub order: WordOrder,
    pub identify: ProfileIdentify,
    pub points: BTreeMap<String, PointConfig>,
    pub actions: BTreeMap<String, ActionConfig>,
    pub source: ProfileSource,
}

impl Profile {
    /// Modbus profiles take `register` points; serial ones `field` points.
    pub fn is_modbus(&self) -> bool {
        self.buses.iter().all(|b| b.is_modbus())
    }

    /// The bus kind its points are read with (Modbus vs serial is all that matters there).
    fn point_kind(&self) -> BusKind {
        if self.is_modbus() {
            BusKind::ModbusRtu
        } else {
            BusKind::Serial
        }
    }

    /// Whether what a device reports about itself names this model.
    pub fn matches(&self, vendor: &str, product: &str) -> bool {
        let norm = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let (v, p) = (norm(vendor), norm(product));
        let (want_v, want_p) = (norm(&self.identify.vendor), norm(&self.identify.product));
        !want_p.is_empty() && p.contains(&want_p) && (v.is_empty() || v.contains(&want_v))
    }
}

/// Every profile a config can name: the built-in ones, shadowed by the user's.
///
/// The built-in profiles are parsed one by one, the first time one is asked for, and kept: a
/// gateway holds only the ones its devices use, not the whole library (hundreds of points).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profiles {
    /// The user's profiles, parsed at load (so their errors are the config's).
    user: BTreeMap<String, Profile>,
    /// User profile files that failed to load (their errors are reported on their own).
    broken: BTreeSet<String>,
}

type Parsed = Result<Profile, ConfigErrors>;

/// Built-in profile `i` of `BUILTIN`, parsed on first use.
fn builtin_at(i: usize) -> Option<&'static Parsed> {
    static SLOTS: OnceLock<Vec<OnceLock<Parsed>>> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| BUILTIN.iter().map(|_| OnceLock::new()).collect());
    let (file, text) = BUILTIN.get(i)?;
    Some(slots.get(i)?.get_or_init(|| {
        let name = file.trim_end_matches(".toml");
        let shown = Path::new("profiles").join(file);
        parse_profile(text, &shown, name, ProfileSource::BuiltIn(file.to_string()))
    }))
}

/// The built-in profile `name`, parsed on first use.
fn builtin_named(name: &str) -> Option<&'static Parsed> {
    let i = BUILTIN
        .iter()
        .position(|(file, _)| file.trim_end_matches(".toml") == name)?;
    builtin_at(i)
}

impl Profiles {
    /// The built-in profiles, every one parsed (for listing them and for tests). They are
    /// checked by the test suite, so an error here is a bug; it is reported like any profile
    /// error rather than panicking.
    pub fn builtin() -> Result<&'static Profiles, &'static ConfigErrors> {
        static ALL: OnceLock<Result<Profiles, ConfigErrors>> = OnceLock::new();
        ALL.get_or_init(|| {
            let errors: Vec<ConfigError> = (0..BUILTIN.len())
                .filter_map(builtin_at)
                .filter_map(|p| p.as_ref().err())
                .flat_map(|e| e.0.iter().cloned())
                .collect();
            if errors.is_empty() {
                Ok(Profiles::default())
            } else {
                Err(ConfigErrors(errors))
            }
        })
        .as_ref()
    }

    /// The built-in profiles and the user's `*.toml` files in `dir` (a missing directory has
    /// none). Every problem of every user file is returned, with the profiles that did load.
    pub fn load(dir: &Path) -> (Profiles, Vec<ConfigError>) {
        let mut out = Profiles::default();
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, errors),
            Err(e) => {
                errors.push(file_error(
                    dir,
                    format!("cannot read profiles directory: {e}"),
                ));
                return (out, errors);
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            if !is_valid_name(&name) {
                errors.push(file_error(
                    &path,
                    format!(
                        "invalid profile name \"{name}\"; file names use only a-z, 0-9, _ and -"
                    ),
                ));
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| {
                    ConfigErrors(vec![file_error(&path, format!("cannot read profile: {e}"))])
                })
                .and_then(|text| {
                    parse_profile(&text, &path, &name, ProfileSource::File(path.clone()))
                });
            match parsed {
                Ok(p) => {
                    out.user.insert(name, p);
                }
                Err(e) => {
                    // A broken user file does not fall back to the built-in it meant to shadow.
                    out.broken.insert(name);
                    errors.extend(e.0);
                }
            }
        }
        (out, errors)
    }

    /// The profile `name`: the user's, else the built-in one (a built-in that does not parse
    /// is a bug the test suite catches; it is then absent).
    pub fn get(&self, name: &str) -> Option<&Profile> {
        if self.broken.contains(name) {
            return None;
        }
        self.user
            .get(name)
            .or_else(|| builtin_named(name).and_then(|p| p.as_ref().ok()))
    }

    /// Whether `name` is a user profile that failed to load.
    pub fn is_broken(&self, name: &str) -> bool {
        self.broken.contains(name)
    }

    /// Every profile by name (this parses every built-in one).
    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        let names: Vec<String> = self.names().into_iter().map(str::to_string).collect();
        names.into_iter().filter_map(move |n| self.get(&n))
    }

    /// Every profile name, sorted, without parsing anything.
    pub fn names(&self) -> Vec<&str> {
        let mut names: BTreeSet<&str> = BUILTIN
            .iter()
            .map(|(file, _)| file.trim_end_matches(".toml"))
            .collect();
        names.extend(self.user.keys().map(String::as_str));
        for b in &self.broken {
            names.remove(b.as_str());
        }
        names.into_iter().collect()
    }
}

/// The user's profiles directory for a config file: `profiles/` beside it.
pub fn profiles_dir(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("profiles")
}

fn file_error(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        key: String::new(),
        message,
    }
}

/// Parses one profile file; `path` names it in messages.
pub fn parse_profile(
    text: &str,
    path: &Path,
    name: &str,
    source: ProfileSource,
) -> Result<Profile, ConfigErrors> {
    parse_document(text, path, |cx, root| cx.profile(root, name, source))
}

impl Extractor<'_> {
    fn profile(&mut self, s: &Section, name: &str, source: ProfileSource) -> Profile {
        self.keys(
            s,
            &[
                "manufacturer",
                "model",
                "description",
                "document",
                "buses",
                "poll",
                "order",
                "identify",
                "points",
                "actions",
            ],
        );
        let manufacturer = self.text(s, "manufacturer");
        let manufacturer = self.required(s, "manufacturer", manufacturer, "manufacturer");
        let model = self.text(s, "model");
        let model = self.required(s, "model", model, "model");
        let description = self.text(s, "description");
        let document = match self.table(s, "document") {
            Some(d) => {
                self.keys(&d, &["title", "version", "date", "url"]);
                let title = self.text(&d, "title");
                let title = self.required(&d, "title", title, "title of the source document");
                let version = self.text(&d, "version");
                let date = self.text(&d, "date");
                if version.is_none() && date.is_none() && !d.table.contains_key("version") {
                    self.error(
                        d.at.clone(),
                        &d.key("version"),
                        "the source document needs a `version` or a `date`",
                    );
                }
                ProfileDocument {
                    title: title.unwrap_or_default(),
                    version,
                    date,
                    url: self.text(&d, "url"),
                }
            }
            None => {
                if !s.table.contains_key("document") {
                    self.error(
                        0..0,
                        "document",
                        "missing [document]: the register map's source (title and version or date)",
                    );
                }
                ProfileDocument {
                    title: String::new(),
                    version: None,
                    date: None,
                    url: None,
                }
            }
        };
        let buses = self.bus_kinds(s);
        if !buses.is_empty()
            && buses.iter().any(|b| b.is_modbus())
            && buses.iter().any(|b| !b.is_modbus())
        {
            self.error_at(
                &s.key("buses"),
                "a profile is for Modbus buses or for serial buses, not both",
            );
        }
        let poll = self.duration(s, "poll");
        let order = self
            .choice(s, "order", "order", WordOrder::NAMES)
            .map_or(WordOrder::Abcd, |i| WordOrder::ALL[i]);
        let identify = match self.table(s, "identify") {
            Some(t) => {
                self.keys(&t, &["vendor", "product"]);
                ProfileIdentify {
                    vendor: self
                        .text(&t, "vendor")
                        .unwrap_or_else(|| manufacturer.clone().unwrap_or_default()),
                    product: self
                        .text(&t, "product")
                        .unwrap_or_else(|| model.clone().unwrap_or_default()),
                }
            }
            None => ProfileIdentify {
                vendor: manufacturer.clone().unwrap_or_default(),
                product: model.clone().unwrap_or_default(),
            },
        };
        let kind = if buses.iter().all(|b| b.is_modbus()) {
            BusKind::ModbusRtu
        } else {
            BusKind::Serial
        };
        let points = match self.table(s, "points") {
            Some(t) => self.points_over(&t, Some(kind), &BTreeMap::new(), order),
            None => BTreeMap::new(),
        };
        if points.is_empty() && !s.table.contains_key("points") {
            self.error(0..0, "points", "a profile needs at least one point");
        }
        let actions = match self.table(s, "actions") {
            Some(t) => self.actions(&t, Some(kind), &points),
            None => BTreeMap::new(),
        };
        Profile {
            name: name.to_string(),
            manufacturer: manufacturer.unwrap_or_default(),
            model: model.unwrap_or_default(),
            description,
            document,
            buses,
            poll,
            order,
            identify,
            points,
            actions,
            source,
        }
    }

    /// `buses = ["modbus-rtu", "modbus-tcp"]`: at least one known bus kind.
    fn bus_kinds(&mut self, s: &Section) -> Vec<BusKind> {
        const KINDS: [BusKind; 4] = [
            BusKind::ModbusRtu,
            BusKind::ModbusTcp,
            BusKind::ModbusRtuOverTcp,
            BusKind::Serial,
        ];
        let Some(v) = self.value(s, "buses") else {
            self.error(
                0..0,
                "buses",
                format!(
                    "missing buses (the bus kinds the device has: {})",
                    one_of(BusKind::NAMES)
                ),
            );
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(s, "buses", v, "an array of bus kinds");
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            match item.get_ref() {
                DeValue::String(k) => match BusKind::NAMES.iter().position(|n| *n == k.as_ref()) {
                    Some(i) => out.push(KINDS[i]),
                    None => self.error(
                        item.span(),
                        &s.key("buses"),
                        format!(
                            "unknown bus kind \"{k}\"; expected {}",
                            one_of(BusKind::NAMES)
                        ),
                    ),
                },
                _ => self.error(item.span(), &s.key("buses"), "expected a bus kind string"),
            }
        }
        if items.is_empty() {
            self.error_at(&s.key("buses"), "name at least one bus kind");
        }
        out
    }

    /// A device's `profile = "NAME"`, checked against its bus kind.
    pub(super) fn device_profile<'p>(
        &mut self,
        s: &Section,
        kind: Option<BusKind>,
        profiles: &'p Profiles,
    ) -> Option<&'p Profile> {
        let name = self.text(s, "profile")?;
        let key = s.key("profile");
        let Some(p) = profiles.get(&name) else {
            if profiles.is_broken(&name) {
                self.error_at(
                    &key,
                    format!("profile \"{name}\" has errors (listed with its file)"),
                );
            } else {
                let names = profiles.names();
                let msg = match super::extract::closest(&name, &names) {
                    Some(near) => format!("unknown profile \"{name}\" (did you mean \"{near}\"?)"),
                    None => {
                        format!("unknown profile \"{name}\"; `fieldbridge profiles` lists them")
                    }
                };
                self.error_at(&key, msg);
            }
            return None;
        };
        if let Some(k) = kind {
            if k.is_modbus() != p.is_modbus() {
                self.error_at(
                    &key,
                    format!(
                        "profile \"{name}\" is for {} buses; this device's bus is {}",
                        if p.is_modbus() { "Modbus" } else { "serial" },
                        k.name()
                    ),
                );
                return None;
            }
        }
        Some(p)
    }

    /// The device's points over its profile's, and where each came from.
    pub(super) fn device_points(
        &mut self,
        s: &Section,
        kind: Option<BusKind>,
        profile: Option<&Profile>,
    ) -> (BTreeMap<String, PointConfig>, Option<DeviceProfile>) {
        let Some(p) = profile else {
            let points = match self.table(s, "points") {
                Some(t) => self.points(&t, kind),
                None => BTreeMap::new(),
            };
            return (points, None);
        };
        let mut points = p.points.clone();
        let mut origin: BTreeMap<String, Vec<String>> =
            p.points.keys().map(|k| (k.clone(), Vec::new())).collect();
        if let Some(t) = self.table(s, "points") {
            let own = self.points_over(&t, kind.or(Some(p.point_kind())), &p.points, p.order);
            for (name, point) in own {
                if let Some(keys) = origin.get_mut(&name) {
                    if let Some(DeValue::Table(pt)) =
                        t.table.get(name.as_str()).map(|v| v.get_ref())
                    {
                        *keys = pt.iter().map(|(k, _)| k.get_ref().to_string()).collect();
                    }
                }
                points.insert(name, point);
            }
        }
        let dp = DeviceProfile {
            name: p.name.clone(),
            source: p.source.to_string(),
            points: origin,
        };
        (points, Some(dp))
    }

    /// The device's actions over its profile's: a device action replaces the profile's of the
    /// same name; the profile's others must still fit the device's points.
    pub(super) fn device_actions(
        &mut self,
        s: &Section,
        kind: Option<BusKind>,
        profile: Option<&Profile>,
        points: &BTreeMap<String, PointConfig>,
    ) -> BTreeMap<String, ActionConfig> {
        let own = match self.table(s, "actions") {
            Some(t) => self.actions(&t, kind, points),
            None => BTreeMap::new(),
        };
        let Some(p) = profile else {
            return own;
        };
        let mut actions = BTreeMap::new();
        for (name, action) in &p.actions {
            if own.contains_key(name) {
                continue;
            }
            for (point, value) in &action.set {
                let problem = match points.get(point) {
                    None => Some("no such point".to_string()),
                    Some(pt) if !pt.writable => Some("the point is not writable".to_string()),
                    Some(pt) => super::points::check_set_value(pt, value).err(),
                };
                if let Some(problem) = problem {
                    self.error_at(
                        &s.key("points"),
                        format!(
                            "profile action \"{name}\" sets point \"{point}\", which the device's points no longer allow: {problem}"
                        ),
                    );
                }
            }
            actions.insert(name.clone(), action.clone());
        }
        actions.extend(own);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_profile_parses() {
        let profiles = match Profiles::builtin() {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(profiles.iter().count(), BUILTIN.len());
        assert!(BUILTIN.len() >= 12, "{} built-in profiles", BUILTIN.len());
        for p in profiles.iter() {
            assert!(!p.document.title.is_empty(), "{}", p.name);
            assert!(!p.points.is_empty(), "{}", p.name);
        }
    }

    #[test]
    fn identify_matches_ignore_case_and_punctuation() {
        let text = "manufacturer = \"Eastron\"\nmodel = \"SDM630\"\nbuses = [\"modbus-rtu\"]\n[document]\ntitle = \"t\"\nversion = \"1\"\n[points.v]\nregister = \"input:0\"\n";
        let p = parse_profile(
            text,
            Path::new("x.toml"),
            "x",
            ProfileSource::File("x.toml".into()),
        )
        .unwrap();
        assert!(p.matches("EASTRON", "SDM630-Modbus V2"));
        assert!(p.matches("", "sdm 630"));
        assert!(!p.matches("Eastron", "SDM120"));
        assert!(!p.matches("Acme", "SDM630"));
    }
}
