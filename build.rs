// Migrations are embedded by sqlx::migrate!(); a new file must trigger a rebuild. The device
// profiles in profiles/ are compiled in: the list of them is generated here, so a new profile
// is a new file and nothing else.
fn main() {
    link_layout();
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=profiles");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from(
        "/// (file name, text) of every built-in profile.\nconst BUILTIN: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        let path = dir.join(f);
        println!("cargo:rerun-if-changed={}", path.display());
        out.push_str(&format!(
            "    ({f:?}, include_str!({:?})),
",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()))
        .join("builtin_profiles.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}

/// How the release `fieldbridge` binary is linked on x86_64, where Rust links with LLD:
/// - its code in the order of packaging/code-order.txt, resolved to this build's symbols by
///   packaging/cc-ordered (the linker .cargo/config.toml names). The code a gateway runs is then
///   one stretch of pages instead of most of .text (BENCHMARKS.md, code layout);
/// - relative relocations packed as DT_RELR: 5 KB instead of 535 KB of `.rela.dyn` read and
///   kept resident at start (glibc 2.36, the packages' floor).
///
/// The Raspberry Pi cross builds link with Debian's GNU ld, which takes no symbol order before
/// binutils 2.43; neither is done there, and they keep the default layout and glibc 2.34.
fn link_layout() {
    println!("cargo:rerun-if-changed=packaging/code-order.txt");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let lld = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if release && lld {
        let list =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/code-order.txt");
        println!(
            "cargo:rustc-link-arg-bin=fieldbridge=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        // Without packaging/cc-ordered (a build that does not read .cargo/config.toml) LLD
        // gets the list as it is, matches nothing, and must not warn once per name.
        println!("cargo:rustc-link-arg-bin=fieldbridge=-Wl,--no-warn-symbol-ordering");
        println!("cargo:rustc-link-arg-bin=fieldbridge=-Wl,-z,pack-relative-relocs");
    }
}
