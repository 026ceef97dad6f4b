//! The list files through the store: written once, read back verified, shared by a
//! grant and its spec, collected only after a commit, never through a link; and
//! through the engine over the fake kernel, whose rollback needs the old lists.

use super::*;
use crate::grant::{Grant, Proto};
use crate::kernel::fake::{Fake, TempStore};
use crate::spec::{Source, Spec};
use crate::state::{State, STATE_VERSION};
use crate::txn::{execute, observe_and_compute, Target};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

/// `n` networks /30 of 192.0.2.0/24 and 198.51.100.0/24, from the `start`-th on.
fn nets(start: usize, n: usize) -> Vec<Ipv4Network> {
    (start..start + n)
        .map(|i| {
            let (net, k) = if i < 64 {
                ([192, 0, 2], i)
            } else {
                ([198, 51, 100], i - 64)
            };
            Ipv4Network::new(Ipv4Addr::new(net[0], net[1], net[2], (k * 4) as u8), 30).unwrap()
        })
        .collect()
}

fn grant(iface: &str, port: u16, allow: Vec<Ipv4Network>) -> Grant {
    Grant {
        name: format!("{iface}-{port}"),
        iface: iface.into(),
        proto: Proto::Tcp,
        listen: Ipv4Addr::new(192, 0, 2, 1),
        port,
        to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        allow,
        network: None,
    }
}

/// A committed state of `grants`, with the specs they stand for.
fn state(grants: Vec<Grant>) -> State {
    State {
        version: STATE_VERSION,
        specs: grants
            .iter()
            .map(|g| Spec::of_grant(g, Source::Policy))
            .collect(),
        grants,
        ..Default::default()
    }
}

/// The list files of `dir`, sorted.
fn list_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("allow-"))
        .collect();
    names.sort();
    names
}

fn file_of(list: &[Ipv4Network]) -> String {
    ListId::of(&encode(list)).file_name()
}

fn state_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("state.json")).unwrap()
}

#[test]
fn a_long_list_shared_by_a_grant_and_its_spec_is_stored_once_and_reads_back() {
    let t = TempStore::new();
    let dir = t.store.dir.path().to_path_buf();
    let long = nets(0, 100);
    let saved = state(vec![
        grant("br0", 3306, long.clone()),
        grant("br1", 3307, nets(0, FILE_MIN - 1)),
    ]);
    t.store.save(&saved).unwrap();
    assert_eq!(list_files(&dir), vec![file_of(&long)]);
    let text = state_text(&dir);
    let id = ListId::of(&encode(&long));
    assert_eq!(text.matches(&id.reference()).count(), 2, "{text}");
    assert!(
        !text.contains("198.51.100.0/30"),
        "the long list is not inline"
    );
    assert!(
        text.contains("\"192.0.2.248/30\"]"),
        "a short list stays inline: {text}"
    );
    assert!(text.contains(&format!("\"version\":{STATE_VERSION}")));
    // Read by a store that knows nothing yet.
    let (first, dir_handle) = t.into_parts();
    drop(first);
    let fresh = dir_handle.open();
    assert_eq!(fresh.load().unwrap(), saved);
}

#[test]
fn a_version_2_file_with_lists_inline_reads_as_it_is() {
    let t = TempStore::new();
    let mut v2 = state(vec![grant("br0", 3306, nets(0, 100))]);
    v2.version = 2;
    let bytes = serde_json::to_vec(&v2).unwrap();
    t.store.write_raw(Some(&bytes)).unwrap();
    let loaded = t.store.load().unwrap();
    assert_eq!(
        loaded,
        State {
            version: STATE_VERSION,
            ..v2
        }
    );
    // Written again, it is version 3 with its list in a file.
    t.store.save(&loaded).unwrap();
    assert_eq!(list_files(t.store.dir.path()).len(), 1);
}

#[test]
fn saving_unchanged_lists_writes_only_the_state_file() {
    use std::os::unix::fs::MetadataExt;
    let t = TempStore::new();
    let dir = t.store.dir.path().to_path_buf();
    let long = nets(0, 100);
    let mut s = state(vec![grant("br0", 3306, long.clone())]);
    t.store.save(&s).unwrap();
    let list = dir.join(file_of(&long));
    let inode = std::fs::metadata(&list).unwrap().ino();
    // A later process (no memo) that changes something else.
    let (first, dir_handle) = t.into_parts();
    drop(first);
    let next = dir_handle.open();
    s.writers = vec![7];
    next.save(&s).unwrap();
    assert_eq!(
        std::fs::metadata(&list).unwrap().ino(),
        inode,
        "not rewritten"
    );
    assert!(state_text(&dir).len() < 2000, "{}", state_text(&dir));
    assert_eq!(next.load().unwrap(), s);
}

/// Journal, commit and rollback as a transaction writes them: the old list stays
/// until the commit's collection, the new one is written before the journal.
#[test]
fn a_changed_list_gets_a_new_file_and_the_old_one_goes_only_when_collected() {
    let t = TempStore::new();
    let dir = t.store.dir.path().to_path_buf();
    let (a, b) = (nets(0, 100), nets(1, 100));
    let old = state(vec![grant("br0", 3306, a.clone())]);
    t.store.save(&old).unwrap();
    let undo = t.store.read_raw().unwrap();
    let new = state(vec![grant("br0", 3306, b.clone())]);
    let journal = State {
        pending: Some(new.grants.clone()),
        ..old.clone()
    };
    t.store.save(&journal).unwrap();
    let both = {
        let mut v = vec![file_of(&a), file_of(&b)];
        v.sort();
        v
    };
    assert_eq!(list_files(&dir), both);
    t.store.save(&new).unwrap();
    assert_eq!(list_files(&dir), both, "a save collects nothing");
    // A failure after the commit rolls back to the old bytes: they still read.
    t.store.write_raw(undo.as_deref()).unwrap();
    assert_eq!(t.store.load().unwrap(), old);
    // Collected against the file as it is now (raw-written): the new list goes.
    assert_eq!(t.store.collect_lists().unwrap(), 1);
    assert_eq!(list_files(&dir), vec![file_of(&a)]);
    // The change again, committed: the old list goes.
    t.store.save(&journal).unwrap();
    t.store.save(&new).unwrap();
    assert_eq!(t.store.collect_lists().unwrap(), 1);
    assert_eq!(list_files(&dir), vec![file_of(&b)]);
    let (first, dir_handle) = t.into_parts();
    drop(first);
    assert_eq!(dir_handle.open().load().unwrap(), new);
}

#[test]
fn a_list_that_does_not_match_its_name_is_a_corrupt_state_named_in_one_line() {
    let t = TempStore::new();
    let dir = t.store.dir.path().to_path_buf();
    let long = nets(0, 100);
    t.store
        .save(&state(vec![grant("br0", 3306, long.clone())]))
        .unwrap();
    let list = dir.join(file_of(&long));
    // Same length, one network changed: only the hash tells.
    let text = std::fs::read_to_string(&list)
        .unwrap()
        .replacen("192.0.2.0/30", "192.0.2.8/30", 1);
    std::fs::write(&list, text).unwrap();
    let (first, dir_handle) = t.into_parts();
    let memo = first.take_memo();
    drop(first);
    let fresh = dir_handle.open();
    let err = format!("{:#}", fresh.load().unwrap_err());
    assert!(
        err.contains(&list.display().to_string())
            && err.contains("corrupt")
            && err.contains("does not match its name"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    drop(fresh);
    // A process that read it before it was damaged keeps what it verified (the memo);
    // its next save finds the file in place (right length) and leaves it.
    let known = dir_handle.open();
    known.adopt(memo);
    assert!(known.load().is_ok());
}

#[test]
fn a_missing_list_is_named() {
    let t = TempStore::new();
    let long = nets(0, 100);
    t.store
        .save(&state(vec![grant("br0", 3306, long.clone())]))
        .unwrap();
    let list = t.store.dir.path().join(file_of(&long));
    std::fs::remove_file(&list).unwrap();
    let (first, dir_handle) = t.into_parts();
    drop(first);
    let err = format!("{:#}", dir_handle.open().load().unwrap_err());
    assert!(
        err.contains(&list.display().to_string()) && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn a_link_planted_as_a_list_file_is_never_followed() {
    let t = TempStore::new();
    let dir = t.store.dir.path().to_path_buf();
    let long = nets(0, 100);
    let s = state(vec![grant("br0", 3306, long.clone())]);
    t.store.save(&s).unwrap();
    let list = dir.join(file_of(&long));
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(&list, victim.path()).unwrap();
    std::fs::remove_file(&list).unwrap();
    std::os::unix::fs::symlink(victim.path(), &list).unwrap();
    let (first, dir_handle) = t.into_parts();
    drop(first);
    let fresh = dir_handle.open();
    let err = format!("{:#}", fresh.load().unwrap_err());
    assert!(
        err.contains("symbolic link") && err.contains(&file_of(&long)),
        "{err}"
    );
    // A save replaces the link by the list; the link's target is not written.
    let before = std::fs::read(victim.path()).unwrap();
    std::fs::write(victim.path(), b"other").unwrap();
    fresh.save(&s).unwrap();
    assert_eq!(std::fs::read(victim.path()).unwrap(), b"other");
    assert!(!std::fs::symlink_metadata(&list).unwrap().is_symlink());
    assert_eq!(std::fs::read(&list).unwrap(), before);
    assert_eq!(fresh.load().unwrap(), s);
}

/// A crash after the list files of a save and before its state file: the old state
/// reads, and the next commit collects the orphan (and a write's temporary file).
#[test]
fn a_crash_between_the_list_and_the_state_leaves_a_loadable_state() {
    let t = TempStore::new();
    let dir = t.store.dir.path().to_path_buf();
    let (a, b) = (nets(0, 100), nets(1, 100));
    let old = state(vec![grant("br0", 3306, a.clone())]);
    t.store.save(&old).unwrap();
    {
        let (mut memo, mut local) = (Memo::default(), Local::default());
        let mut w = Writer::new(&t.store.dir, &mut memo, &mut local);
        w.put(&b).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(dir.join("allow-x.json.1.2.tmp"), b"[").unwrap();
    let (first, dir_handle) = t.into_parts();
    drop(first);
    let next = dir_handle.open();
    assert_eq!(next.load().unwrap(), old);
    assert_eq!(list_files(&dir).len(), 3);
    next.save(&old).unwrap();
    assert_eq!(next.collect_lists().unwrap(), 2);
    assert_eq!(list_files(&dir), vec![file_of(&a)]);
}

/// Through the engine: a change of a long list that fails after its journal rolls
/// back to a state that still reads, and a committed one leaves the new list only.
#[test]
fn the_engine_collects_the_old_list_after_its_commit_and_not_on_a_rollback() {
    let kernel = Fake::with_devices(&[(5, "br0", 0)]);
    let t = TempStore::new();
    let dir = t.store.dir.path().to_path_buf();
    let converge = |allow: Vec<Ipv4Network>| -> anyhow::Result<()> {
        let old = t.store.load()?;
        let g = grant("br0", 3306, allow);
        let target = Target {
            grants: vec![g.clone()],
            specs: vec![Spec::of_grant(&g, Source::Policy)],
            ..Target::recorded(&old)
        };
        let (change, snapshot) = observe_and_compute(&kernel, old, target)?;
        execute(&kernel, &t.store, &change, &snapshot).map(|_| ())
    };
    let (a, b) = (nets(0, 100), nets(1, 100));
    converge(a.clone()).unwrap();
    assert_eq!(list_files(&dir), vec![file_of(&a)]);
    let committed = state_text(&dir);
    kernel.fail("change");
    kernel.fail("apply");
    assert!(converge(b.clone()).is_err());
    kernel.state.borrow_mut().fail.clear();
    assert_eq!(state_text(&dir), committed, "rolled back byte for byte");
    assert_eq!(t.store.load().unwrap().grants[0].allow, a);
    converge(b.clone()).unwrap();
    assert_eq!(list_files(&dir), vec![file_of(&b)]);
    let (first, dir_handle) = t.into_parts();
    drop(first);
    assert_eq!(dir_handle.open().load().unwrap().specs[0].allow, b);
}

#[test]
fn references_and_file_names_are_exact() {
    let id = ListId::of(b"[]");
    assert_eq!(ListId::from_reference(&id.reference()), Some(id));
    assert_eq!(ListId::from_file_name(&id.file_name()), Some(id));
    assert_eq!(
        id.reference(),
        "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
    );
    for bad in [
        "sha256:",
        "sha256:4F53",
        "md5:4f53",
        &id.reference().to_uppercase(),
    ] {
        assert_eq!(ListId::from_reference(bad), None, "{bad}");
    }
    assert_eq!(ListId::from_file_name("allow-x.json.1.2.tmp"), None);
}

#[test]
fn a_list_file_is_the_json_array_of_its_texts_and_reads_back_in_one_pass() {
    let mut list = nets(0, 130);
    list.push("0.0.0.0/1".parse().unwrap());
    list.push("255.255.255.255/32".parse().unwrap());
    list.push("10.100.9.0/24".parse().unwrap());
    let bytes = encode(&list);
    let mut json = Vec::new();
    crate::grant::serialize_networks(&list, &mut serde_json::Serializer::new(&mut json)).unwrap();
    assert_eq!(
        String::from_utf8(bytes.clone()).unwrap(),
        String::from_utf8(json).unwrap()
    );
    assert_eq!(decode(&bytes), Some(list.clone()));
    assert_eq!(decode(b"[]"), Some(vec![]));
    // Anything else is left to the JSON reader, which reads what is JSON.
    for other in [
        &b"[ \"192.0.2.0/24\"]"[..],
        b"[\"192.0.2.00/24\"]",
        b"[\"192.0.2.0/33\"]",
        b"[\"192.0.2.256/24\"]",
        b"[\"192.0.2.0/24\",]",
        b"[\"192.0.2.0/24\"] ",
        b"[\"192.0.2.0/24\"",
        b"[\"192.0.2.0\"]",
    ] {
        assert_eq!(decode(other), None, "{}", String::from_utf8_lossy(other));
    }
    let spaced = b"[ \"192.0.2.0/24\" , \"198.51.100.0/25\" ]";
    let read: Vec<Ipv4Network> = serde_json::from_slice(spaced).unwrap();
    assert_eq!(read.len(), 2);
}
