//! The Python plugin helper's own unit tests (`sdk/python/test_backworks_plugin.py`), run here so
//! that the one test command covers them.

use std::process::Command;

use crate::support::root;

#[test]
fn python_helper_unit_tests_pass() {
    let out = Command::new("python3")
        .args(["-B", "-m", "unittest", "-q"])
        .current_dir(root().join("sdk/python"))
        .output()
        .expect("python3 must be installed for the Python plugin tests (.ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 -m unittest failed:\n{stderr}"
    );
    assert!(stderr.contains("OK"), "{stderr}");
}
