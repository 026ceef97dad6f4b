#!/usr/bin/env bash
# Runs every check of loopgate: formatting, lints, docs, unit tests, and the integration
# tests that drive the real kernel inside network namespaces they create and remove.
# Needs root (namespaces, nftables); never touches the machine's own namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh must run as root: the tests create network namespaces" >&2
  exit 1
fi
. scripts/install-deps.sh test

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (warnings are errors)"
cargo clippy --locked --all-targets --features failpoints -- -D warnings
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --quiet
echo "==> cargo test (unit + namespace integration tests, with the failpoint test hook)"
# Doc tests are skipped (there are none); a summary line closes the run below.
cargo test --locked --features failpoints --all-targets 2>&1 | tee /tmp/loopgate-test.log
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' /tmp/loopgate-test.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/loopgate-test.log | awk '{s+=$1} END {print s+0}')
echo "==> release build has no test hook"
cargo build --locked --release --quiet
# A build with the hook says so in --version (src/cli.rs); the test build is the control.
if target/release/loopgate --version | grep -q failpoints; then
  echo "the release binary contains the failpoint hook" >&2
  exit 1
fi
target/debug/loopgate --version | grep -q failpoints ||
  { echo "the test build does not report its failpoint hook: the check above proves nothing" >&2; exit 1; }
echo "==> Kubernetes manifests against the API schema (kubernetes-validate from PyPI)"
if [ ! -x /tmp/loopgate-kv/bin/kubernetes-validate ]; then
  /usr/bin/python3 -m venv /tmp/loopgate-kv
  /tmp/loopgate-kv/bin/pip install --quiet kubernetes-validate
fi
/tmp/loopgate-kv/bin/kubernetes-validate --strict --quiet deploy/kubernetes/loopgate.yaml
echo "==> packaging: Debian package and cargo install"
scripts/package.sh
deb=$(ls target/debian/loopgate_*.deb | head -n 1)
contents=$(dpkg-deb -c "$deb")
for f in usr/bin/loopgate lib/systemd/system/loopgate.service lib/systemd/system/loopgate-watch.service \
         usr/share/man/man1/loopgate.1.gz usr/share/bash-completion/completions/loopgate etc/loopgate/loopgate.yaml; do
  grep -q " ./$f\$" <<<"$contents" || { echo "$deb lacks $f" >&2; exit 1; }
done
depends=$(dpkg-deb -f "$deb" Depends)
grep -q libnftnl11 <<<"$depends" || { echo "$deb does not depend on libnftnl11" >&2; exit 1; }
grep -q libmnl0 <<<"$depends" || { echo "$deb does not depend on libmnl0" >&2; exit 1; }
inst=$(mktemp -d)
cargo install --locked --quiet --path . --root "$inst"
"$inst/bin/loopgate" --version
rm -rf "$inst"
echo "==> fuzz smoke run (policy parser and validators)"
scripts/fuzz.sh 30
echo "==> benchmark smoke run (checks that every measured path works, not its speed)"
scripts/bench.sh --quick > /tmp/loopgate-bench.log 2>&1 || { cat /tmp/loopgate-bench.log; echo "bench failed" >&2; exit 1; }
for case in direct veth-limit hand-written-nft loopgate-1-grant loopgate-10k-cidrs loopgate-100-grants socat; do
  grep -q "\"case\":\"$case\".*\"mode\":\"rr\",\"ops\":[1-9]" bench-results/results.jsonl ||
    { echo "bench path $case carried no traffic" >&2; exit 1; }
done
echo "==> watch benchmark smoke run (idle CPU and reaction time; checks it works, not its speed)"
scripts/bench_watch.sh --quick > /tmp/loopgate-bench-watch.log 2>&1 || { cat /tmp/loopgate-bench-watch.log; echo "watch bench failed" >&2; exit 1; }
grep -q '"small_reaction_median_ms"' bench-results/watch.json && grep -q '"edit_curve":\[{' bench-results/watch.json
echo "==> demo smoke run"
scripts/demo.sh >/tmp/loopgate-demo.log 2>&1 || { cat /tmp/loopgate-demo.log; echo "demo failed" >&2; exit 1; }
grep -q "the container reached the service" /tmp/loopgate-demo.log
echo "all checks passed"
echo "tests: $passed passed, $failed failed"
