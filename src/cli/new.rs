//! `plugin new NAME [--lang rust|python|c]`: a plugin project that builds and passes its tests as
//! generated. The templates are compiled into the binary (`src/cli/templates/`), so it works
//! offline; the Python helper and the C header are the SDK's own files, embedded the same way.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A Rust `cdylib` crate against `backworks-plugin-sdk`, tested with the testkit.
    Rust,
    /// A Python script over the wire protocol, run under `isolation: process`.
    Python,
    /// A C library against `backworks_plugin.h`, built with `make`.
    C,
}

/// Where a new Rust crate takes `backworks-plugin-sdk` and `backworks-plugin-testkit` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// Path dependencies into a Backworks source checkout (its root folder).
    Checkout(PathBuf),
    /// Version requirements, resolved by Cargo's registry.
    Registry,
}

/// Why a plugin project could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// The name is not usable as a plugin, crate and file name.
    #[error(
        "plugin name `{0}`: use 1 to 64 lower-case letters, digits and `-`, starting with a letter \
         and not ending with `-` (it becomes the crate, library and config name)"
    )]
    BadName(String),
    /// The target folder exists and is not empty.
    #[error("{}: already exists and is not empty; choose another name or --path", .0.display())]
    NotEmpty(PathBuf),
    /// `--sdk-path` does not hold a Backworks checkout.
    #[error(
        "{}: not a Backworks source checkout (no plugin-sdk/Cargo.toml and plugin-testkit/Cargo.toml there)",
        .0.display()
    )]
    NotACheckout(PathBuf),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// One file of a template: its path in the project and its text, with `{{placeholders}}`.
struct TemplateFile {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

const RUST: &[TemplateFile] = &[
    TemplateFile {
        path: "Cargo.toml",
        text: include_str!("templates/rust/Cargo.toml.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: "src/lib.rs",
        text: include_str!("templates/rust/src/lib.rs.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: "tests/plugin.rs",
        text: include_str!("templates/rust/tests/plugin.rs.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: "README.md",
        text: include_str!("templates/rust/README.md.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: ".gitignore",
        text: include_str!("templates/rust/gitignore.tmpl"),
        executable: false,
    },
];

const PYTHON: &[TemplateFile] = &[
    TemplateFile {
        path: "plugin.py",
        text: include_str!("templates/python/plugin.py.tmpl"),
        executable: true,
    },
    TemplateFile {
        path: "test_plugin.py",
        text: include_str!("templates/python/test_plugin.py.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: "README.md",
        text: include_str!("templates/python/README.md.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: "backworks_plugin.py",
        text: include_str!("../../sdk/python/backworks_plugin.py"),
        executable: false,
    },
];

const C: &[TemplateFile] = &[
    TemplateFile {
        path: "plugin.c",
        text: include_str!("templates/c/plugin.c.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: "Makefile",
        text: include_str!("templates/c/Makefile.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: "README.md",
        text: include_str!("templates/c/README.md.tmpl"),
        executable: false,
    },
    TemplateFile {
        path: "include/backworks_plugin.h",
        text: include_str!("../../plugin-sdk/include/backworks_plugin.h"),
        executable: false,
    },
];

/// What `plugin new` is asked for.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// The plugin's name (also the crate's and the config's).
    pub name: String,
    /// Its language.
    pub lang: Lang,
    /// The folder to create (default: `./NAME`).
    pub path: Option<PathBuf>,
    /// Its one-line description.
    pub description: Option<String>,
    /// Where a Rust crate's SDK comes from (default: this binary's checkout when it still exists,
    /// otherwise the registry).
    pub sdk: Option<SdkSource>,
}

/// The Backworks checkout this binary was built from, when it is still there.
fn own_checkout() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    is_checkout(&root).then_some(root)
}

fn is_checkout(root: &Path) -> bool {
    root.join("plugin-sdk/Cargo.toml").is_file() && root.join("plugin-testkit/Cargo.toml").is_file()
}

/// `plugin new`: writes the project and prints what to do next. Returns the exit code.
pub fn run(request: &NewPlugin) -> anyhow::Result<i32> {
    let created = create(request)?;
    let dir = created.dir.display();
    println!(
        "created {} plugin `{}` in {dir}",
        lang_name(request.lang),
        request.name
    );
    for file in &created.files {
        println!("  {}", file.display());
    }
    if let Some(note) = &created.sdk_note {
        println!("{note}");
    }
    println!("next:");
    match request.lang {
        Lang::Rust => {
            println!("  cd {dir} && cargo build --release && cargo test");
        }
        Lang::Python => println!("  cd {dir} && python3 -m unittest"),
        Lang::C => println!("  cd {dir} && make && make check"),
    }
    println!("  then see {dir}/README.md to serve, pack, sign and publish it");
    Ok(0)
}

/// What [`create`] wrote.
#[derive(Debug)]
pub struct Created {
    /// The project folder.
    pub dir: PathBuf,
    /// The files, relative to it.
    pub files: Vec<PathBuf>,
    /// Where the SDK dependency points, for a Rust crate.
    pub sdk_note: Option<String>,
}

/// Writes a new plugin project; refuses a bad name or a non-empty folder, and writes nothing then.
pub fn create(request: &NewPlugin) -> Result<Created, NewError> {
    check_name(&request.name)?;
    let dir = request
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&request.name));
    if let Ok(mut entries) = fs::read_dir(&dir)
        && entries.next().is_some()
    {
        return Err(NewError::NotEmpty(dir));
    }
    let sdk = match &request.sdk {
        Some(SdkSource::Checkout(root)) if !is_checkout(root) => {
            return Err(NewError::NotACheckout(root.clone()));
        }
        Some(source) => source.clone(),
        None => own_checkout().map_or(SdkSource::Registry, SdkSource::Checkout),
    };
    let values = Values::new(request, &sdk);
    let (files, sdk_note) = match request.lang {
        Lang::Rust => (RUST, Some(sdk_note(&sdk))),
        Lang::Python => (PYTHON, None),
        Lang::C => (C, None),
    };
    let mut written = Vec::new();
    for file in files {
        let path = dir.join(file.path);
        write_file(&path, &values.render(file.text), file.executable)?;
        written.push(PathBuf::from(file.path));
    }
    Ok(Created {
        dir,
        files: written,
        sdk_note,
    })
}

fn sdk_note(sdk: &SdkSource) -> String {
    match sdk {
        SdkSource::Checkout(root) => format!(
            "the SDK and testkit are path dependencies into {} (use --sdk-registry for versions)",
            root.display()
        ),
        SdkSource::Registry => format!(
            "the SDK and testkit are registry dependencies, version {}",
            env!("CARGO_PKG_VERSION")
        ),
    }
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::C => "C",
    }
}

fn write_file(path: &Path, text: &str, executable: bool) -> Result<(), NewError> {
    let failed = |source| NewError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(failed)?;
    }
    fs::write(path, text).map_err(failed)?;
    if executable {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(failed)?;
    }
    Ok(())
}

/// A plugin name: `[a-z][a-z0-9-]*`, at most 64 bytes, not ending with `-`, no `--`.
fn check_name(name: &str) -> Result<(), NewError> {
    let bad = || NewError::BadName(name.to_owned());
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !first_ok || !rest_ok || name.len() > 64 || name.ends_with('-') || name.contains("--") {
        return Err(bad());
    }
    Ok(())
}

/// The values of a template's placeholders.
struct Values {
    pairs: Vec<(&'static str, String)>,
}

impl Values {
    fn new(request: &NewPlugin, sdk: &SdkSource) -> Values {
        let name = request.name.clone();
        let crate_name = name.replace('-', "_");
        let type_name: String = name
            .split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect();
        let description = request
            .description
            .clone()
            .unwrap_or_else(|| "a Backworks plugin".to_owned());
        let version = env!("CARGO_PKG_VERSION");
        let dependency = |package: &str, folder: &str| match sdk {
            SdkSource::Checkout(root) => format!(
                "{package} = {{ path = {}, version = \"{version}\" }}",
                toml_string(&root.join(folder).display().to_string())
            ),
            SdkSource::Registry => format!("{package} = \"{version}\""),
        };
        Values {
            pairs: vec![
                (
                    "sdk_dependency",
                    dependency("backworks-plugin-sdk", "plugin-sdk"),
                ),
                (
                    "testkit_dependency",
                    dependency("backworks-plugin-testkit", "plugin-testkit"),
                ),
                ("crate_name", crate_name),
                ("type_name", type_name),
                ("description", escape_description(&description)),
                ("name", name),
            ],
        }
    }

    fn render(&self, template: &str) -> String {
        let mut text = template.to_owned();
        for (key, value) in &self.pairs {
            text = text.replace(&format!("{{{{{key}}}}}"), value);
        }
        text
    }
}

/// A TOML basic string (quotes and backslashes escaped).
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The description goes into TOML, Rust, Python and C strings and Markdown: keep it one line of
/// characters that need no escaping in any of them.
fn escape_description(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' | '`' | '{' | '}' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(lang_name(*self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, lang: Lang, dir: &Path) -> NewPlugin {
        NewPlugin {
            name: name.to_owned(),
            lang,
            path: Some(dir.join(name)),
            description: Some("says \"hi\" {loudly}".to_owned()),
            sdk: Some(SdkSource::Registry),
        }
    }

    #[test]
    fn names_must_suit_crates_files_and_configs() {
        for good in ["a", "my-plugin", "p2", "auth-v2-check"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "My", "1st", "-a", "a-", "a--b", "a_b", "a b", "a/b", "..", "ä",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn every_placeholder_of_every_template_is_filled() {
        let dir = tempfile::tempdir().unwrap();
        for lang in [Lang::Rust, Lang::Python, Lang::C] {
            let created = create(&request("my-plugin", lang, dir.path())).unwrap();
            for file in &created.files {
                let text = fs::read_to_string(created.dir.join(file)).unwrap();
                assert!(
                    !text.contains("{{"),
                    "{lang}: {} keeps a {{{{",
                    file.display()
                );
            }
            fs::remove_dir_all(&created.dir).unwrap();
        }
    }

    #[test]
    fn names_become_crate_and_type_names() {
        let dir = tempfile::tempdir().unwrap();
        let created = create(&request("auth-v2-check", Lang::Rust, dir.path())).unwrap();
        let lib = fs::read_to_string(created.dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("pub struct AuthV2Check"), "{lib}");
        let readme = fs::read_to_string(created.dir.join("README.md")).unwrap();
        assert!(readme.contains("libauth_v2_check.so"));
        let manifest = fs::read_to_string(created.dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("description = \"says 'hi' 'loudly'\""));
    }

    #[test]
    fn a_non_empty_folder_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep.txt"), "mine").unwrap();
        let refused = create(&request("p", Lang::Python, dir.path())).unwrap_err();
        assert!(matches!(refused, NewError::NotEmpty(_)), "{refused}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 1);
    }

    #[test]
    fn a_checkout_must_hold_the_sdk() {
        let dir = tempfile::tempdir().unwrap();
        let mut asked = request("p", Lang::Rust, dir.path());
        asked.sdk = Some(SdkSource::Checkout(dir.path().to_owned()));
        assert!(matches!(
            create(&asked).unwrap_err(),
            NewError::NotACheckout(_)
        ));
    }
}
