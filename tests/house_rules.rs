//! The house rules of the module map, as a test: which top-level module may
//! not import which. The rules are written once, in the table under
//! "House rules" in docs/ARCHITECTURE.md; this test reads that table and
//! every file under src/, and fails naming the file, the line and the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ARCHITECTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ARCHITECTURE.md");
const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// One rule: these modules may not import those.
#[derive(Debug)]
struct Rule {
    modules: Selector,
    forbidden: BTreeSet<String>,
    text: String,
}

#[derive(Debug)]
enum Selector {
    These(BTreeSet<String>),
    AllExcept(BTreeSet<String>),
}

impl Selector {
    fn covers(&self, module: &str) -> bool {
        match self {
            Selector::These(set) => set.contains(module),
            Selector::AllExcept(set) => !set.contains(module),
        }
    }
}

/// The names in backticks in a table cell.
fn ticked(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The rows between `<!-- house-rules -->` and `<!-- /house-rules -->`:
/// `| modules | may not import |`, where the first cell is backticked
/// names, or `every module` with an optional `except` list.
fn rules(markdown: &str) -> Vec<Rule> {
    let start = markdown
        .find("<!-- house-rules -->")
        .expect("ARCHITECTURE.md has a <!-- house-rules --> table");
    let end = markdown[start..]
        .find("<!-- /house-rules -->")
        .expect("the house-rules table is closed")
        + start;
    let mut rules = Vec::new();
    for line in markdown[start..end].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() < 2 || cells[0].contains("---") || cells[0].trim() == "modules" {
            continue;
        }
        let modules = if cells[0].contains("every module") {
            Selector::AllExcept(ticked(cells[0]))
        } else {
            Selector::These(ticked(cells[0]))
        };
        rules.push(Rule {
            modules,
            forbidden: ticked(cells[1]),
            text: line.trim().to_string(),
        });
    }
    assert!(
        !rules.is_empty(),
        "no rules read from the house-rules table"
    );
    rules
}

/// The top-level modules a piece of Rust source names through `crate::`,
/// with the line each is first named on. Comments are skipped.
fn imports(source: &str) -> BTreeMap<String, usize> {
    let mut found = BTreeMap::new();
    for (number, line) in source.lines().enumerate() {
        let code = match line.find("//") {
            Some(comment) => &line[..comment],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c, d::{e, f}}`: the first name of each
                // top-level item of the group.
                let mut depth = 0;
                let mut items = vec![String::new()];
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(String::new()),
                        _ => items.last_mut().unwrap().push(c),
                    }
                }
                items
                    .iter()
                    .map(|item| identifier(item.trim()))
                    .filter(|name| !name.is_empty())
                    .collect()
            } else {
                vec![identifier(rest)]
            };
            for name in names.into_iter().filter(|n| !n.is_empty()) {
                found.entry(name).or_insert(number + 1);
            }
        }
    }
    found
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level module a file under src/ belongs to (None for the crate
/// roots).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(SRC).ok()?;
    let first = relative.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn violations(rules: &[Rule], files: &[(PathBuf, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (path, source) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        for (imported, line) in imports(source) {
            if imported == module {
                continue;
            }
            for rule in rules {
                if rule.modules.covers(&module) && rule.forbidden.contains(&imported) {
                    out.push(format!(
                        "{}:{line}: `{module}` imports `{imported}`, against the rule {}",
                        path.display(),
                        rule.text
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn modules_import_only_what_the_house_rules_allow() {
    let markdown = std::fs::read_to_string(ARCHITECTURE).expect("read ARCHITECTURE.md");
    let rules = rules(&markdown);
    let mut paths = Vec::new();
    rust_files(Path::new(SRC), &mut paths);
    let files: Vec<(PathBuf, String)> = paths
        .into_iter()
        .map(|path| {
            let source = std::fs::read_to_string(&path).expect("read source");
            (path, source)
        })
        .collect();
    assert!(files.len() > 50, "src/ looks empty: {} files", files.len());
    let found = violations(&rules, &files);
    assert!(
        found.is_empty(),
        "{} import(s) break the house rules:\n{}",
        found.len(),
        found.join("\n")
    );
}

/// The checker itself can fail: a forbidden import, in each form the
/// crate uses, is reported.
#[test]
fn a_forbidden_import_is_reported() {
    let markdown = std::fs::read_to_string(ARCHITECTURE).expect("read ARCHITECTURE.md");
    let rules = rules(&markdown);
    let spool_file = PathBuf::from(SRC).join("spool").join("example.rs");
    for source in [
        "use crate::delivery::Engine;\n",
        "use crate::{envelope::QueueId, web::render};\n",
        "fn f() { crate::smtp::tls(); }\n",
    ] {
        let found = violations(&rules, &[(spool_file.clone(), source.to_string())]);
        assert!(!found.is_empty(), "not reported: {source:?}");
    }
    let allowed = "use crate::envelope::QueueId; // crate::web in a comment\n";
    assert!(violations(&rules, &[(spool_file, allowed.to_string())]).is_empty());
}
