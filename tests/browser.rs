//! The dashboard in a real browser: runs `tests/browser/dashboard.test.mjs`
//! (Node's test runner driving Chromium through playwright-core) against the
//! `tickwire` binary this build produced.
//!
//! Needs `/usr/bin/chromium` and `tests/browser/node_modules` (both installed by
//! `.ci/run`). Without them this test fails rather than skipping, so a machine
//! that cannot run it does not report the dashboard as tested.
//!
//! `DASHBOARD_STATS=1 cargo test --test browser -- --nocapture` also
//! prints what the 200-symbol test measured (see `docs/dashboard.md`).

use std::path::Path;
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn dashboard_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playwright = root.join("tests/browser/node_modules/playwright-core");
    let setup = "run .ci/run, or install the prerequisites: \
                 `apt-get install -y chromium nodejs npm` and `npm ci --prefix tests/browser`";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing; {setup}"
    );
    assert!(
        playwright.is_dir(),
        "{} is missing; {setup}",
        playwright.display()
    );

    let output = Command::new("node")
        .args(["--test", "tests/browser/dashboard.test.mjs"])
        .current_dir(root)
        .env("TICKWIRE_BIN", env!("CARGO_BIN_EXE_tickwire"))
        .env("CHROMIUM", CHROMIUM)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}); {setup}"));
    assert!(
        output.status.success(),
        "the browser tests failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    if std::env::var_os("DASHBOARD_STATS").is_some_and(|v| v == "1") {
        // The measurements are TAP diagnostics (`# ...` lines) of the test run.
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
}
