#![allow(clippy::unwrap_used)]
//! The layer rule of docs/design.md ("The house"), read off the source: which module each file
//! of `src/` names (`use` lines and paths, comments left out), checked against the floors. A
//! file may name its own floor and the floors below, never above; the edges that still run the
//! wrong way are listed here, each one a debt docs/design.md names. Also: no two files of `src/`
//! name each other, directly or round a longer circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Floors by module path (the longest listed prefix of a file's module path decides).
const FLOORS: &[(&str, u8)] = &[
    ("main", 5),
    ("cli", 5),
    ("app", 5),
    ("demo", 5),
    // Scaffolding for the fuzz targets, behind the `fuzzing` feature: it drives the parsers.
    ("fuzz", 5),
    ("router", 4),
    ("fleet", 4),
    ("web", 4),
    ("check", 4),
    ("commission", 4),
    ("catalogue", 4),
    ("device", 3),
    ("sunspec", 3),
    ("ha", 3),
    ("health", 3),
    ("report", 3),
    ("bus", 2),
    ("mqtt", 2),
    ("history", 2),
    ("config", 1),
    ("topics", 1),
    ("payload", 1),
    ("output", 1),
    // The pure parts: values in, decisions out.
    ("bus::codec", 1),
    ("bus::plan", 1),
    ("bus::decode", 1),
    ("device::state", 1),
    ("device::command", 1),
    ("model", 0),
    ("installation", 0),
    ("systemd", 0),
    ("telemetry", 0),
    ("rate_limit", 0),
];

/// Edges that still go up a floor (from file, to module): the debts docs/design.md lists under
/// "Where the code breaks the rule today". A debt paid is taken off this list; the test fails
/// when one listed here is no longer there, so the list cannot go stale.
const KNOWN_UPWARD: &[(&str, &str)] = &[
    // The config's warnings include what Home Assistant would refuse, placed at their line.
    ("config::load", "ha"),
    // A planned write and a planned read are the bus's request types (`WriteSpec`, `ReadSpec`,
    // `RawData`), which live with the bus task.
    ("device::command", "bus"),
    ("bus::plan", "bus"),
    ("bus::decode", "bus"),
];

/// What the device layer and the MQTT link must never name (docs/design.md, the output seam).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "device",
        &["mqtt", "history", "topics", "payload", "telemetry"],
    ),
    ("mqtt", &["device"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` with its module path (`device::modbus`; `device` for
/// `device/mod.rs`; `main` for the binary's root).
fn files() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let root = src();
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            (parts.join("::"), p)
        })
        .filter(|(m, _)| m != "lib")
        .collect()
}

/// The source without comments and string literals, so that a path in a doc comment or a
/// message does not count.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r'
            && !(i > 0 && is_ident(b[i - 1] as char))
            && matches!(b.get(i + 1), Some(b'#') | Some(b'"'))
        {
            // A raw string `r#"…"#`: skipped to the quote followed by as many `#`.
            let mut j = i + 1;
            while b.get(j) == Some(&b'#') {
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            j += 1;
            while j < b.len()
                && !(b[j] == b'"'
                    && b[j + 1..].iter().take(hashes).all(|c| *c == b'#')
                    && j + hashes < b.len())
            {
                j += 1;
            }
            i = j + 1 + hashes;
            out.push_str("\"\"");
        } else if b[i] == b'"' && !(i > 0 && b[i - 1] == b'\'') {
            // A string: skipped up to its closing quote (escapes skipped whole).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths a file names: `crate::a::b…` (and `fieldbridge::…` in the binary), and
/// `super::…` resolved against the file's own module. Names in `use` groups count one by one.
fn references(module: &str, is_mod_rs: bool, code: &str) -> BTreeSet<Vec<String>> {
    let mut refs = BTreeSet::new();
    let own: Vec<String> = module.split("::").map(str::to_string).collect();
    // `super` is the parent of the file's module: a `mod.rs` file's module is its directory's
    // (`device/mod.rs` is `device`), so the same rule holds for it.
    let _ = is_mod_rs;
    let parent: Vec<String> = own[..own.len().saturating_sub(1)].to_vec();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let at_word = i == 0 || !is_ident(chars[i - 1]);
        let rest: String = chars[i..chars.len().min(i + 12)].iter().collect();
        let base = if !at_word {
            None
        } else if rest.starts_with("crate::") {
            Some((Vec::new(), 7))
        } else if rest.starts_with("fieldbridge::") {
            Some((Vec::new(), 13))
        } else if rest.starts_with("super::") {
            Some((parent.clone(), 7))
        } else {
            None
        };
        let Some((mut prefix, skip)) = base else {
            i += 1;
            continue;
        };
        i += skip;
        // Further `super::`.
        while chars[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
            prefix.pop();
            i += 7;
        }
        for path in path_tail(&chars, &mut i) {
            let mut full = prefix.clone();
            full.extend(path);
            refs.insert(full);
        }
    }
    refs
}

/// The path after `crate::` at `i`: `a::b::c`, or a `use` group `a::{b, c::d}` (each member).
fn path_tail(chars: &[char], i: &mut usize) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    loop {
        let start = *i;
        while *i < chars.len() && is_ident(chars[*i]) {
            *i += 1;
        }
        if *i > start {
            segs.push(chars[start..*i].iter().collect::<String>());
        }
        if chars[*i..].starts_with(&[':', ':']) {
            *i += 2;
            if chars.get(*i) == Some(&'{') {
                // A group: each member is a path of its own under `segs`.
                *i += 1;
                let mut out = Vec::new();
                loop {
                    while chars
                        .get(*i)
                        .is_some_and(|c| c.is_whitespace() || *c == ',')
                    {
                        *i += 1;
                    }
                    match chars.get(*i) {
                        None => break,
                        Some('}') => {
                            *i += 1;
                            break;
                        }
                        _ => {}
                    }
                    let before = *i;
                    for member in path_tail(chars, i) {
                        let mut p = segs.clone();
                        p.extend(member);
                        out.push(p);
                    }
                    // Skip `as x` and anything else up to the next `,` or `}`.
                    while chars.get(*i).is_some_and(|c| *c != ',' && *c != '}') {
                        *i += 1;
                    }
                    if *i == before {
                        *i += 1;
                    }
                }
                return out;
            }
            continue;
        }
        return vec![segs];
    }
}

/// The file a module path lands in: its longest prefix that is a file of `src/`.
fn resolve(path: &[String], files: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| files.contains_key(m))
}

fn floor(module: &str) -> u8 {
    FLOORS
        .iter()
        .filter(|(m, _)| module == *m || module.starts_with(&format!("{m}::")))
        .max_by_key(|(m, _)| m.len())
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("{module} has no floor: add it to FLOORS and docs/design.md"))
}

fn within(module: &str, top: &str) -> bool {
    module == top || module.starts_with(&format!("{top}::"))
}

/// Each file's edges to the other files it names. A `mod.rs` declaring and re-exporting its
/// own children is structure, not a dependency, and is left out.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let files = files();
    let mut out = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let is_mod_rs = path.file_name().is_some_and(|f| f == "mod.rs");
        let code = code_only(&text);
        let mut to = BTreeSet::new();
        // A file's test module (always last) is a module inside the file: its `super` is the
        // file itself.
        let (body, tests) = code.split_at(code.find("mod tests {").unwrap_or(code.len()));
        let inner = format!("{module}::tests");
        let refs = references(module, is_mod_rs, body)
            .into_iter()
            .chain(references(&inner, false, tests));
        for r in refs {
            let Some(target) = resolve(&r, &files) else {
                continue;
            };
            let child_of_mine = is_mod_rs && target.starts_with(&format!("{module}::"));
            if target != *module && !child_of_mine {
                to.insert(target);
            }
        }
        // `mod.rs` re-exports by bare child name (`pub use store::*`): already left out.
        out.insert(module.clone(), to);
    }
    out
}

#[test]
fn the_device_layer_and_the_mqtt_link_name_nothing_they_must_not() {
    let mut bad = Vec::new();
    for (from, to) in edges() {
        for (layer, forbidden) in FORBIDDEN {
            if !within(&from, layer) {
                continue;
            }
            for t in &to {
                if forbidden.iter().any(|f| within(t, f)) {
                    bad.push(format!("{from} -> {t}"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "forbidden imports:\n{}", bad.join("\n"));
}

#[test]
fn no_file_names_a_file_on_a_floor_above_its_own_but_the_known_debts() {
    let mut upward = BTreeSet::new();
    for (from, to) in edges() {
        for t in to {
            if floor(&t) > floor(&from) {
                upward.insert((from.clone(), t));
            }
        }
    }
    let known = |from: &str, to: &str| {
        KNOWN_UPWARD
            .iter()
            .any(|(f, t)| from == *f && within(to, t))
    };
    let new: Vec<String> = upward
        .iter()
        .filter(|(f, t)| !known(f, t))
        .map(|(f, t)| format!("{f} (floor {}) -> {t} (floor {})", floor(f), floor(t)))
        .collect();
    assert!(
        new.is_empty(),
        "imports up a floor (docs/design.md):\n{}",
        new.join("\n")
    );
    let stale: Vec<String> = KNOWN_UPWARD
        .iter()
        .filter(|(f, t)| !upward.iter().any(|(uf, ut)| uf == f && within(ut, t)))
        .map(|(f, t)| format!("{f} -> {t}"))
        .collect();
    assert!(
        stale.is_empty(),
        "paid debts still listed in KNOWN_UPWARD (take them off, and off docs/design.md):\n{}",
        stale.join("\n")
    );
}

#[test]
fn no_two_files_name_each_other_even_round_a_circle() {
    let edges = edges();
    // Tarjan's strongly connected components: any component of more than one file is a circle.
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        circles: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(to) = s.edges.get(v) {
            for w in to {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.circles.push(component);
            }
        }
    }
    let mut s = State {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        circles: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    let circles: Vec<String> = s.circles.iter().map(|c| c.join(" <-> ")).collect();
    assert!(
        circles.is_empty(),
        "files that name each other:\n{}",
        circles.join("\n")
    );
}

/// The reader itself: a planted import in each form is found, and comments and strings are not
/// read as imports.
#[test]
fn the_reader_finds_imports_in_every_form_and_only_in_code() {
    let code = code_only(
        "use crate::a::{b, c::{d, e as f}};\n\
         use super::g;\n\
         fn x() { crate::h::i(); let _ = \"crate::not::this\"; }\n\
         // crate::nor::this\n\
         /// [`crate::nor::docs`]\n",
    );
    let refs = references("m::n", false, &code);
    let names: BTreeSet<String> = refs.iter().map(|r| r.join("::")).collect();
    for want in ["a::b", "a::c::d", "a::c::e", "m::g", "h::i"] {
        assert!(names.contains(want), "{want} not found in {names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("not") || n.starts_with("nor")),
        "{names:?}"
    );
    // `super` from a `mod.rs` is the parent of its module, as from a plain file.
    let refs = references("m::n", true, "use super::k;");
    assert!(
        refs.contains(&vec!["m".to_string(), "k".to_string()]),
        "{refs:?}"
    );
}
