//! Records the git commit for `breakwater --version` (empty outside a checkout).
fn main() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BREAKWATER_GIT_COMMIT={commit}");
    // Ask git where HEAD and refs live: in a worktree `.git` is a file, and
    // watching a path that does not exist would rebuild the crate every time.
    match git(&["rev-parse", "--git-path", "HEAD", "--git-path", "refs"]) {
        Some(paths) => paths
            .lines()
            .for_each(|path| println!("cargo:rerun-if-changed={path}")),
        None => println!("cargo:rerun-if-changed=build.rs"),
    }
}
