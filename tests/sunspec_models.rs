#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The SunSpec model tables in `src/sunspec/models.rs` are generated, not typed: this test reads
//! the published model definitions (`test-data/sunspec/models/model_N.json`, from the
//! sunspec/models repository, Apache-2.0) and writes the Rust tables from them. It fails when
//! the checked-in file differs from what the definitions give; `FIELDBRIDGE_BLESS=1` rewrites
//! it (after adding or updating a model's JSON).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// The models `profile = "sunspec"` builds points for.
const MODELS: &[u16] = &[
    1, 101, 102, 103, 111, 112, 113, 124, 160, 201, 202, 203, 204, 211, 212, 213, 214, 802,
];

fn kind(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "uint16" => "U16",
        "int16" => "I16",
        "uint32" => "U32",
        "int32" => "I32",
        "acc16" => "Acc16",
        "acc32" => "Acc32",
        "acc64" => "Acc64",
        "float32" => "F32",
        "enum16" => "Enum16",
        "string" => "String",
        "sunssf" => "ScaleFactor",
        "count" => "Count",
        // Bit fields (events, alarms) and padding are not published.
        "bitfield16" | "bitfield32" | "pad" => return None,
        other => panic!("SunSpec point type {other:?} has no kind; add one to src/sunspec/mod.rs"),
    })
}

/// Offsets (from the model's ID register) of every point of a group, by name.
fn offsets(points: &[Value], start: u64) -> Vec<(String, u64)> {
    let mut at = start;
    let mut out = Vec::new();
    for p in points {
        out.push((p["name"].as_str().unwrap().to_string(), at));
        at += p["size"].as_u64().unwrap();
    }
    out
}

/// The tables being written. Every string is a slice of one text (`Str(start, len)`) and every
/// list a range of one array, so the tables hold no pointers: the binary keeps them read-only,
/// with nothing to relocate (and so no memory written) at start.
#[derive(Default)]
struct Tables {
    text: String,
    points: Vec<String>,
    symbols: Vec<String>,
}

impl Tables {
    fn str(&mut self, s: &str) -> String {
        let start = match self.text.find(s) {
            Some(i) => i,
            None => {
                self.text.push_str(s);
                self.text.len() - s.len()
            }
        };
        assert!(
            start + s.len() <= usize::from(u16::MAX) && s.len() <= 255,
            "{s}"
        );
        format!("Str({start}, {})", s.len())
    }

    /// The published points of a group; their range in `POINTS`.
    fn points(&mut self, points: &[Value], scale_factors: &[(String, u64)]) -> (usize, usize) {
        let first = self.points.len();
        let mut at = 0;
        for p in points {
            let size = p["size"].as_u64().unwrap();
            let name = p["name"].as_str().unwrap();
            let ty = p["type"].as_str().unwrap();
            let offset = at;
            at += size;
            let Some(kind) = kind(ty) else { continue };
            let sf = match p.get("sf").and_then(Value::as_str) {
                Some(sf) => {
                    let (_, o) = scale_factors
                        .iter()
                        .find(|(n, _)| n == sf)
                        .unwrap_or_else(|| {
                            panic!("{name}: scale factor {sf} not in the fixed block")
                        });
                    format!("Some({o})")
                }
                None => "None".to_string(),
            };
            let units = match p.get("units").and_then(Value::as_str) {
                Some(u) => format!("Some({})", self.str(u)),
                None => "None".to_string(),
            };
            let first_symbol = self.symbols.len();
            if ty.starts_with("enum") {
                for sym in p
                    .get("symbols")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let text = self.str(sym["name"].as_str().unwrap());
                    self.symbols
                        .push(format!("({}, {text})", sym["value"].as_i64().unwrap()));
                }
            }
            let symbols = (first_symbol, self.symbols.len() - first_symbol);
            let name = self.str(name);
            self.points.push(format!(
                "PointDef {{ name: {name}, offset: {offset}, size: {size}, kind: Kind::{kind}, sf: {sf}, units: {units}, symbols: ({}, {}) }}",
                symbols.0, symbols.1
            ));
        }
        (first, self.points.len() - first)
    }
}

fn generate(dir: &Path) -> String {
    let mut t = Tables::default();
    let mut models = String::new();
    for id in MODELS {
        let path = dir.join(format!("model_{id}.json"));
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            json["id"].as_u64(),
            Some(u64::from(*id)),
            "{}",
            path.display()
        );
        let group = &json["group"];
        let points = group["points"].as_array().unwrap();
        let fixed_len: u64 = points.iter().map(|p| p["size"].as_u64().unwrap()).sum();
        let scale_factors: Vec<(String, u64)> = offsets(points, 0)
            .into_iter()
            .filter(|(n, _)| {
                points
                    .iter()
                    .any(|p| p["name"] == n.as_str() && p["type"] == "sunssf")
            })
            .collect();
        let name = t.str(group["name"].as_str().unwrap());
        let label = t.str(group["label"].as_str().unwrap_or_default());
        let (first, count) = t.points(points, &scale_factors);
        let repeating = match group
            .get("groups")
            .and_then(Value::as_array)
            .map(|g| g.as_slice())
        {
            None | Some([]) => "None".to_string(),
            Some([g]) => {
                let gp = g["points"].as_array().unwrap();
                assert!(
                    g.get("groups").is_none(),
                    "model {id}: nested repeating groups"
                );
                let glen: u64 = gp.iter().map(|p| p["size"].as_u64().unwrap()).sum();
                let gname = t.str(g["name"].as_str().unwrap());
                let (gfirst, gcount) = t.points(gp, &scale_factors);
                format!(
                    "Some(GroupDef {{ name: {gname}, length: {glen}, points: ({gfirst}, {gcount}) }})"
                )
            }
            Some(_) => panic!("model {id}: more than one repeating group"),
        };
        // The length the definition gives (L), without the ID and L registers.
        let _ = writeln!(
            models,
            "    ModelDef {{ id: {id}, name: {name}, label: {label}, length: {}, points: ({first}, {count}), repeating: {repeating} }},",
            fixed_len - 2
        );
    }
    let mut out = String::from(
        "// @generated by tests/sunspec_models.rs from the SunSpec model definitions in\n\
         // test-data/sunspec/models/ (github.com/sunspec/models, json/model_N.json, Apache-2.0).\n\
         // Do not edit: change the generator or the JSON, then run it with FIELDBRIDGE_BLESS=1.\n\
         //\n\
         // Offsets count from the model's ID register (ID is 0, L is 1). Bit fields and padding\n\
         // are left out. `sf` is the offset of the point's scale factor in the same model.\n\
         // Strings are slices of TEXT, lists ranges of POINTS and SYMBOLS: no pointers.\n\n\
         use super::{GroupDef, Kind, ModelDef, PointDef, Str};\n\n",
    );
    let _ = writeln!(out, "/// Every string of the tables.");
    let _ = writeln!(out, "pub const TEXT: &str = {:?};\n", t.text);
    let _ = writeln!(out, "/// Every SunSpec model fieldbridge knows, by id.");
    let _ = writeln!(out, "pub static MODELS: [ModelDef; {}] = [", MODELS.len());
    out.push_str(&models);
    out.push_str("];\n\n");
    let _ = writeln!(
        out,
        "/// The published points of every model, model by model."
    );
    let _ = writeln!(out, "pub static POINTS: [PointDef; {}] = [", t.points.len());
    for p in &t.points {
        let _ = writeln!(out, "    {p},");
    }
    out.push_str("];\n\n");
    let _ = writeln!(out, "/// The values and names of every enum point.");
    let _ = writeln!(
        out,
        "pub static SYMBOLS: [(i64, Str); {}] = [",
        t.symbols.len()
    );
    for sym in &t.symbols {
        let _ = writeln!(out, "    {sym},");
    }
    out.push_str("];\n");
    out
}

#[test]
fn the_sunspec_model_tables_are_generated_from_the_published_definitions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = generate(&root.join("test-data/sunspec/models"));
    let path = root.join("src/sunspec/models.rs");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        if std::env::var_os("FIELDBRIDGE_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        } else {
            panic!(
                "src/sunspec/models.rs differs from what test-data/sunspec/models gives; run this test with FIELDBRIDGE_BLESS=1 to rewrite it"
            );
        }
    }
}
