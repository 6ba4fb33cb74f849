//! The index: a folder (or any static web server) with one file per plugin name, cargo-index
//! layout (`1/a`, `2/ab`, `3/a/abc`, `he/ll/hello`), holding one JSON line per published version.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use backworks_plugin_host::{sha256_hex, supported_sdk};
use backworks_plugin_sdk::abi::ABI_MAJOR;
use serde::{Deserialize, Serialize};

use super::archive::read_package;
use super::error::DistError;
use super::fetch::{Fetcher, Source, is_url};
use super::manifest::{MANIFEST_FILE, Manifest, PackageKind, check_name};

/// Where an index is: a folder, or the root URL of a static web server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexLocation {
    /// A local folder.
    Dir(PathBuf),
    /// An `http(s)://` root; files are at `ROOT/PATH`.
    Url(String),
}

impl IndexLocation {
    /// A URL when `text` starts with `http://` or `https://`, else a folder.
    pub fn parse(text: &str) -> IndexLocation {
        if is_url(text) {
            IndexLocation::Url(text.trim_end_matches('/').to_owned())
        } else {
            IndexLocation::Dir(PathBuf::from(text))
        }
    }

    fn file(&self, relative: &str) -> Source {
        match self {
            IndexLocation::Dir(dir) => Source::File(dir.join(relative)),
            IndexLocation::Url(root) => Source::Url(format!("{root}/{relative}")),
        }
    }

    /// Where the package of `line` is: its `url` when absolute, else relative to the index root.
    pub fn package(&self, line: &IndexLine) -> Source {
        if is_url(&line.url) {
            return Source::Url(line.url.clone());
        }
        self.file(line.url.trim_start_matches('/'))
    }
}

impl std::fmt::Display for IndexLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexLocation::Dir(dir) => write!(f, "{}", dir.display()),
            IndexLocation::Url(url) => f.write_str(url),
        }
    }
}

/// One published version of a plugin: a line of its index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexLine {
    /// The plugin's name.
    pub name: String,
    /// Its version (semver).
    pub version: String,
    /// The target triple, or `any`.
    pub target: String,
    /// Library or command.
    #[serde(default = "library")]
    pub kind: PackageKind,
    /// The plugin's ABI, `major.minor` (libraries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    /// The SDK version it was built with (libraries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
    /// The package: an absolute http(s) URL, or a path relative to the index root.
    pub url: String,
    /// The package file's SHA-256, lower-case hex.
    pub sha256: String,
    /// A yanked version is never chosen for an install or update.
    #[serde(default)]
    pub yanked: bool,
}

fn library() -> PackageKind {
    PackageKind::Library
}

/// The path of a plugin's index file, cargo's layout: `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…`,
/// lower-cased.
pub fn index_path(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    match name.len() {
        1 => format!("1/{name}"),
        2 => format!("2/{name}"),
        3 => format!("3/{}/{name}", &name[..1]),
        _ => format!("{}/{}/{name}", &name[..2], &name[2..4]),
    }
}

/// Every line of `name`'s index file (none when the index has no such file).
pub fn read_lines(
    fetcher: &Fetcher,
    index: &IndexLocation,
    name: &str,
) -> Result<Vec<IndexLine>, DistError> {
    check_name(name).map_err(|reason| DistError::NoVersion {
        name: name.to_owned(),
        reason,
    })?;
    let source = index.file(&index_path(name));
    let Some(bytes) = fetcher.get(&source)? else {
        return Ok(Vec::new());
    };
    parse_lines(&bytes, &source.to_string())
}

fn parse_lines(bytes: &[u8], location: &str) -> Result<Vec<IndexLine>, DistError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DistError::Index {
        location: location.to_owned(),
        reason: "not UTF-8".into(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| DistError::Index {
                location: location.to_owned(),
                reason: format!("line {}: {e}", n + 1),
            })
        })
        .collect()
}

/// Whether this host loads a plugin of this ABI and SDK: the loader's rules (same ABI major, SDK
/// of the host's semver family, pre-release tags ignored); `None` for a command.
pub(crate) fn compatible(abi: Option<&str>, sdk: Option<&str>) -> Result<(), String> {
    if let Some(abi) = abi {
        let major = abi.split('.').next().and_then(|m| m.parse::<u16>().ok());
        if major != Some(ABI_MAJOR) {
            return Err(format!("ABI {abi}, this host loads ABI {ABI_MAJOR}.x"));
        }
    }
    if let Some(sdk) = sdk {
        let family = semver::VersionReq::parse(&supported_sdk()).expect("a semver requirement");
        let ok = semver::Version::parse(sdk).is_ok_and(|mut v| {
            v.pre = semver::Prerelease::EMPTY;
            family.matches(&v)
        });
        if !ok {
            return Err(format!(
                "SDK {sdk}, this host loads SDK {}",
                supported_sdk()
            ));
        }
    }
    Ok(())
}

/// The newest line of `lines` for `name` that is not yanked, is for `target` (or `any`), is
/// compatible with this host, and satisfies `requirement`. The error lists what the index holds
/// and why each version was passed over.
pub fn select<'a>(
    lines: &'a [IndexLine],
    name: &str,
    requirement: Option<&semver::VersionReq>,
    target: &str,
) -> Result<&'a IndexLine, DistError> {
    let mut best: Option<(&IndexLine, semver::Version)> = None;
    let mut passed_over = Vec::new();
    for line in lines.iter().filter(|l| l.name == name) {
        let Ok(version) = semver::Version::parse(&line.version) else {
            passed_over.push(format!("{} (not semver)", line.version));
            continue;
        };
        let why = if requirement.is_some_and(|r| !r.matches(&version)) {
            None
        } else if line.yanked {
            Some("yanked".to_owned())
        } else if line.target != target && line.target != super::manifest::TARGET_ANY {
            Some(format!("for target {}", line.target))
        } else if let Err(why) = compatible(line.abi.as_deref(), line.sdk.as_deref()) {
            Some(why)
        } else {
            if best.as_ref().is_none_or(|(_, v)| version > *v) {
                best = Some((line, version));
            }
            continue;
        };
        passed_over.push(match why {
            Some(why) => format!("{} ({why})", line.version),
            None => line.version.clone(),
        });
    }
    if let Some((line, _)) = best {
        return Ok(line);
    }
    let asked = requirement.map_or_else(|| "any version".to_owned(), |r| format!("version {r}"));
    let reason = if passed_over.is_empty() {
        format!("plugin `{name}` is not in the index")
    } else {
        format!(
            "no {asked} of plugin `{name}` in the index can be installed on this host \
             ({target}); the index has: {}",
            passed_over.join(", ")
        )
    };
    Err(DistError::NoVersion {
        name: name.to_owned(),
        reason,
    })
}

/// `plugin publish`: copies the package at `package` into `index_dir/packages/` and appends its
/// line to the plugin's index file (written atomically). `url_base` makes the line's `url`
/// absolute (`URL_BASE/packages/FILE`); without it the `url` is relative to the index root.
/// A version already published for the same target is refused.
pub fn publish(
    package: &Path,
    index_dir: &Path,
    url_base: Option<&str>,
) -> Result<IndexLine, DistError> {
    let bytes = std::fs::read(package).map_err(|e| DistError::io(package, e))?;
    let shown = package.display().to_string();
    let files = read_package(&bytes, &shown)?;
    let manifest_error = |reason: String| DistError::Manifest {
        package: shown.clone(),
        reason,
    };
    let manifest: Manifest = files
        .get(MANIFEST_FILE)
        .ok_or_else(|| manifest_error(format!("no {MANIFEST_FILE}")))
        .and_then(|m| {
            serde_json::from_slice(m).map_err(|e| manifest_error(format!("{MANIFEST_FILE}: {e}")))
        })?;
    manifest.check().map_err(&manifest_error)?;
    let file_name = manifest.file_name();
    let relative = format!("packages/{file_name}");
    let line = IndexLine {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        target: manifest.target.clone(),
        kind: manifest.kind,
        abi: manifest.abi.clone(),
        sdk: manifest.sdk.clone(),
        url: match url_base {
            Some(base) => format!("{}/{relative}", base.trim_end_matches('/')),
            None => relative.clone(),
        },
        sha256: sha256_hex(&bytes),
        yanked: false,
    };
    let index_file = index_dir.join(index_path(&manifest.name));
    let mut existing = match std::fs::read(&index_file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(DistError::io(&index_file, e)),
    };
    let lines = parse_lines(&existing, &index_file.display().to_string())?;
    if lines
        .iter()
        .any(|l| l.name == line.name && l.version == line.version && l.target == line.target)
    {
        return Err(DistError::Index {
            location: index_file.display().to_string(),
            reason: format!(
                "plugin `{}` {} for {} is already published (publish a new version instead)",
                line.name, line.version, line.target
            ),
        });
    }
    let dest = index_dir.join(&relative);
    write_atomically(&dest, &bytes)?;
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        existing.push(b'\n');
    }
    serde_json::to_writer(&mut existing, &line).expect("an index line serializes");
    existing.push(b'\n');
    write_atomically(&index_file, &existing)?;
    Ok(line)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, then renamed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DistError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DistError::io(dir, e))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| DistError::io(dir, e))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| DistError::io(temp.path(), e))?;
    temp.persist(path)
        .map_err(|e| DistError::io(path, e.error))?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backworks_plugin_sdk::SDK_VERSION;

    fn line(version: &str, target: &str) -> IndexLine {
        IndexLine {
            name: "hello".into(),
            version: version.into(),
            target: target.into(),
            kind: PackageKind::Library,
            abi: Some(format!("{ABI_MAJOR}.0")),
            sdk: Some(SDK_VERSION.into()),
            url: format!("packages/hello-{version}.bwpkg"),
            sha256: "0".repeat(64),
            yanked: false,
        }
    }

    #[test]
    fn cargo_layout() {
        assert_eq!(index_path("a"), "1/a");
        assert_eq!(index_path("ab"), "2/ab");
        assert_eq!(index_path("abc"), "3/a/abc");
        assert_eq!(index_path("Hello"), "he/ll/hello");
    }

    #[test]
    fn newest_compatible_version_is_chosen() {
        let mut yanked = line("1.9.0", "t");
        yanked.yanked = true;
        let mut new_abi = line("3.0.0", "t");
        new_abi.abi = Some(format!("{}.0", ABI_MAJOR + 1));
        let lines = vec![
            line("1.0.0", "t"),
            line("1.2.0", "t"),
            line("1.3.0", "other"),
            yanked,
            line("2.0.0", "t"),
            new_abi,
        ];
        assert_eq!(select(&lines, "hello", None, "t").unwrap().version, "2.0.0");
        let caret = semver::VersionReq::parse("^1").unwrap();
        assert_eq!(
            select(&lines, "hello", Some(&caret), "t").unwrap().version,
            "1.2.0"
        );
        let err = select(&lines, "hello", Some(&"^3".parse().unwrap()), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no version ^3 of plugin `hello`"), "{err}");
        assert!(err.contains("3.0.0 (ABI"), "{err}");
        let err = select(&lines, "hello", Some(&"^9".parse().unwrap()), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the index has: 1.0.0, 1.2.0, 1.3.0"), "{err}");
        let err = select(&lines, "nope", None, "t").unwrap_err().to_string();
        assert_eq!(err, "plugin `nope` is not in the index");
    }

    #[test]
    fn sdk_family() {
        assert_eq!(compatible(None, Some(SDK_VERSION)), Ok(()));
        assert!(
            compatible(None, Some("99.0.0"))
                .unwrap_err()
                .contains("SDK 99.0.0")
        );
        assert!(
            compatible(Some("9.0"), None)
                .unwrap_err()
                .contains("ABI 9.0")
        );
        assert_eq!(compatible(None, None), Ok(()));
    }

    #[test]
    fn package_urls() {
        let dir = IndexLocation::parse("/srv/index");
        let l = line("1.0.0", "t");
        assert_eq!(
            dir.package(&l),
            Source::File("/srv/index/packages/hello-1.0.0.bwpkg".into())
        );
        let web = IndexLocation::parse("https://example.invalid/index/");
        assert_eq!(
            web.package(&l),
            Source::Url("https://example.invalid/index/packages/hello-1.0.0.bwpkg".into())
        );
        let mut abs = l.clone();
        abs.url = "http://elsewhere.invalid/p.bwpkg".into();
        assert_eq!(
            dir.package(&abs),
            Source::Url("http://elsewhere.invalid/p.bwpkg".into())
        );
    }
}
