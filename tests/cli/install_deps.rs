//! scripts/install-deps.sh against a stand-in apt-get, dpkg-query and dpkg.
//!
//! The install step runs as root on the user's machine, so it must never replace what is
//! there: Debian's docker.io conflicts with docker-ce, and its containerd and runc with
//! containerd.io; `apt-get install docker.io` on a docker-ce host removes docker-ce. These
//! tests run the real script with a PATH that holds only stand-ins (which record what apt
//! was asked and answer dpkg's questions from a list) and the few tools the script uses,
//! so the machine's own packages and runtimes are neither seen nor touched. Each scenario
//! that asserts "not requested" has a control in which the same package is requested.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages every scenario reports installed, so that only the runtime decision is left.
const BASE: &[&str] = &[
    "libnftnl11",
    "libmnl0",
    "libnftnl-dev",
    "libmnl-dev",
    "pkg-config",
    "gcc",
    "nftables",
    "iproute2",
    "procps",
    "socat",
    "util-linux",
    "iptables",
    "busybox-static",
    "python3",
    "tini",
    "python3-prometheus-client",
    "python3-venv",
];

const RUNTIME_PKGS: &[&str] = &["docker.io", "containerd", "runc", "podman", "netavark"];

struct Scenario {
    /// Whether BASE is reported installed too.
    base: bool,
    installed: Vec<&'static str>,
    /// Runtime executables on PATH, with the package dpkg -S names as their owner (None:
    /// installed without a package, e.g. a static binary).
    bins: Vec<(&'static str, Option<&'static str>)>,
}

struct Outcome {
    /// Every apt-get invocation, one line of arguments each.
    apt: Vec<String>,
    stdout: String,
    stderr: String,
    ok: bool,
}

impl Outcome {
    fn requested(&self) -> Vec<String> {
        self.apt
            .iter()
            .filter(|l| l.split_whitespace().any(|w| w == "install"))
            .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|w| !w.starts_with('-') && w != "install")
            .collect()
    }

    fn requested_any(&self, pkgs: &[&str]) -> Vec<String> {
        self.requested()
            .into_iter()
            .filter(|p| pkgs.contains(&p.as_str()))
            .collect()
    }
}

fn find_on_path(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is not on PATH; the install-deps tests need it"))
}

fn write_exe(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run_install_deps(job: &str, sc: &Scenario) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("stub");
    let tools = dir.path().join("tools");
    std::fs::create_dir_all(&stub).unwrap();
    std::fs::create_dir_all(&tools).unwrap();
    let log = dir.path().join("apt.log");
    let installed = dir.path().join("installed");
    let owners = dir.path().join("owners");
    let mut all: Vec<&str> = if sc.base { BASE.to_vec() } else { vec![] };
    all.extend(&sc.installed);
    std::fs::write(&installed, all.join("\n") + "\n").unwrap();
    let mut owner_lines = String::new();
    for (bin, owner) in &sc.bins {
        let path = stub.join(bin);
        write_exe(&path, "#!/bin/bash\nexit 0\n");
        if let Some(pkg) = owner {
            owner_lines.push_str(&format!("{} {pkg}\n", path.display()));
        }
    }
    std::fs::write(&owners, owner_lines).unwrap();

    write_exe(
        &stub.join("apt-get"),
        &format!("#!/bin/bash\necho \"$*\" >> '{}'\nexit 0\n", log.display()),
    );
    // dpkg-query -W -f='${Status}' PKG: installed when PKG is a line of the list.
    write_exe(
        &stub.join("dpkg-query"),
        &format!(
            "#!/bin/bash\npkg=${{@: -1}}\nwhile read -r p; do\n  [ \"$p\" = \"$pkg\" ] && {{ printf 'install ok installed'; exit 0; }}\ndone < '{}'\necho \"dpkg-query: no packages found matching $pkg\" >&2\nexit 1\n",
            installed.display()
        ),
    );
    // dpkg -S PATH: the owner from the list; any other use of dpkg is refused.
    write_exe(
        &stub.join("dpkg"),
        &format!(
            "#!/bin/bash\n[ \"$1\" = -S ] || {{ echo \"stand-in dpkg: unexpected $*\" >&2; exit 2; }}\nwhile read -r f p; do\n  [ \"$f\" = \"$2\" ] && {{ echo \"$p: $f\"; exit 0; }}\ndone < '{}'\necho \"dpkg-query: no path found matching pattern $2\" >&2\nexit 1\n",
            owners.display()
        ),
    );
    for tool in ["readlink", "cut", "grep", "cargo", "rustup"] {
        symlink(find_on_path(tool), tools.join(tool)).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
    let out = Command::new("/bin/bash")
        .arg(&script)
        .arg(job)
        .env_clear()
        .env("PATH", format!("{}:{}", stub.display(), tools.display()))
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env(
            "RUSTUP_HOME",
            std::env::var_os("RUSTUP_HOME").unwrap_or_default(),
        )
        .output()
        .unwrap();
    let apt = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    Outcome {
        apt,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    }
}

fn show(o: &Outcome) -> String {
    format!(
        "apt-get calls: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.apt, o.stdout, o.stderr
    )
}

/// Control: a machine with no container runtime gets Debian's, with --no-remove, and
/// the installation is announced with its reason. Without this, the "never requested"
/// assertions below could pass because the script requests nothing at all.
#[test]
fn a_machine_without_runtimes_gets_debians_announced_and_never_removing() {
    let o = run_install_deps(
        "test",
        &Scenario {
            base: true,
            installed: vec![],
            bins: vec![],
        },
    );
    assert!(o.ok, "{}", show(&o));
    let req = o.requested();
    for pkg in ["docker.io", "podman", "netavark", "aardvark-dns"] {
        assert!(
            req.iter().any(|p| p == pkg),
            "{pkg} not requested: {}",
            show(&o)
        );
    }
    for call in o.apt.iter().filter(|l| l.contains("install")) {
        assert!(
            call.contains("--no-remove"),
            "apt-get {call} may remove packages"
        );
    }
    assert!(
        o.stdout.lines().any(
            |l| l.starts_with("==> installing Debian packages docker.io podman")
                && l.contains("runtime tests")
        ),
        "installation not announced with its reason: {}",
        show(&o)
    );
}

/// The case: docker-ce, docker-ce-cli and containerd.io from Docker's repository.
#[test]
fn a_docker_ce_host_gets_no_runtime_package() {
    let o = run_install_deps(
        "test",
        &Scenario {
            base: true,
            installed: vec!["docker-ce", "docker-ce-cli", "containerd.io"],
            bins: vec![
                ("dockerd", Some("docker-ce")),
                ("containerd", Some("containerd.io")),
            ],
        },
    );
    assert!(o.ok, "{}", show(&o));
    let bad = o.requested_any(&["docker.io", "containerd", "runc", "podman"]);
    assert!(bad.is_empty(), "requested {bad:?}: {}", show(&o));
    assert!(
        o.stdout
            .contains("not from Debian is installed (package docker-ce)"),
        "{}",
        show(&o)
    );
}

/// Runtimes installed without a package (static dockerd, podman built elsewhere), or
/// from other packagers, are left alone just the same.
#[test]
fn runtimes_from_any_other_source_are_left_alone() {
    let cases: Vec<(&str, Scenario)> = vec![
        (
            "static dockerd",
            Scenario {
                base: true,
                installed: vec![],
                bins: vec![("dockerd", None)],
            },
        ),
        (
            "podman from elsewhere",
            Scenario {
                base: true,
                installed: vec![],
                bins: vec![("podman", None)],
            },
        ),
        (
            "moby-engine",
            Scenario {
                base: true,
                installed: vec!["moby-engine", "moby-containerd"],
                bins: vec![],
            },
        ),
        (
            "containerd.io alone",
            Scenario {
                base: true,
                installed: vec!["containerd.io"],
                bins: vec![("containerd", Some("containerd.io"))],
            },
        ),
    ];
    for (what, sc) in cases {
        let o = run_install_deps("test", &sc);
        assert!(o.ok, "{what}: {}", show(&o));
        let bad = o.requested_any(RUNTIME_PKGS);
        assert!(bad.is_empty(), "{what}: requested {bad:?}: {}", show(&o));
    }
}

/// Debian's own runtime packages live together: with docker.io present, the missing
/// podman is still installed (and docker.io is not asked for again).
#[test]
fn debians_own_runtimes_are_completed() {
    let o = run_install_deps(
        "test",
        &Scenario {
            base: true,
            installed: vec!["docker.io", "containerd", "runc"],
            bins: vec![
                ("dockerd", Some("docker.io")),
                ("containerd", Some("containerd")),
            ],
        },
    );
    assert!(o.ok, "{}", show(&o));
    let req = o.requested();
    assert!(req.iter().any(|p| p == "podman"), "{}", show(&o));
    assert!(!req.iter().any(|p| p == "docker.io"), "{}", show(&o));
}

/// The demo and the package build need no container runtime and no test tool, even on a
/// machine that has none: each job installs only what it uses.
#[test]
fn each_job_installs_only_what_it_uses() {
    let mut requested: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for job in ["run", "build", "demo", "bench", "test"] {
        // Nothing of BASE installed either: the list of all the job would ask for.
        let bare = Scenario {
            base: false,
            installed: vec![],
            bins: vec![],
        };
        let o = run_install_deps(job, &bare);
        assert!(o.ok, "{job}: {}", show(&o));
        requested.insert(job, o.requested());
    }
    let runtimes = ["docker.io", "podman", "netavark", "aardvark-dns"];
    for job in ["run", "build", "demo", "bench"] {
        let got = &requested[job];
        let bad: Vec<_> = got
            .iter()
            .filter(|p| runtimes.contains(&p.as_str()))
            .collect();
        assert!(bad.is_empty(), "job {job} requested runtimes {bad:?}");
        assert!(
            !got.iter().any(|p| p == "busybox-static" || p == "iptables"),
            "job {job} requested test-only packages: {got:?}"
        );
    }
    assert_eq!(requested["run"], ["libnftnl11", "libmnl0"]);
    assert!(requested["demo"].iter().any(|p| p == "nftables"));
    assert!(requested["demo"].iter().any(|p| p == "socat"));
    assert!(!requested["build"].iter().any(|p| p == "nftables"));
    assert!(requested["test"].iter().any(|p| p == "docker.io"));
}

/// An unknown job is refused in one line naming it, and nothing is installed.
#[test]
fn an_unknown_job_is_refused() {
    let o = run_install_deps(
        "everything",
        &Scenario {
            base: true,
            installed: vec![],
            bins: vec![],
        },
    );
    assert!(!o.ok);
    assert!(o.apt.is_empty(), "{}", show(&o));
    assert!(o.stderr.contains("'everything'"), "{}", show(&o));
}
