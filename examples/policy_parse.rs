//! Benchmark (run by scripts/bench.sh, not a test): is policy parsing linear, and how
//! far is it from serde_json reading the same data?
//!
//! Builds one policy of about `MB` megabytes (grants on 100 interfaces, each with an
//! allow list of 20 networks, as a fleet's generated policy looks) and the same data as
//! JSON; times `loopgate::policy::parse` (the nesting pre-check, the long-list lift and
//! serde_yaml, what `apply` does) against `serde_json::from_str` into the same
//! `Policy`, at 1/10 of the size and at the size, taking the median of `ROUNDS` runs.
//! Prints one JSON line: sizes, medians in ms, the YAML/JSON ratio at full size and the
//! growth factor (time at full size / time at a tenth: 10 is linear), and serde_yaml
//! alone on the same text (the floor: loopgate's checks are the rest).
//!
//!     cargo run --release --example policy_parse -- [MB]

use std::time::Instant;

const ROUNDS: usize = 5;

/// The policy as YAML and as JSON, `grants` entries each.
fn policy(grants: usize) -> (String, String) {
    let mut yaml = String::from("grants:\n");
    let mut json = String::from("{\"grants\":[");
    for g in 0..grants {
        let allow: Vec<String> = (0..20)
            .map(|k| format!("10.{}.{}.0/24", (g / 200) % 256, (g * 20 + k) % 256))
            .collect();
        let (iface, port) = (format!("br{}", g % 100), 1000 + g % 60000);
        yaml.push_str(&format!(
            "  - name: grant-{g}\n    interface: {iface}\n    port: {port}\n    allow: [{}]\n",
            allow.join(", ")
        ));
        if g > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "{{\"name\":\"grant-{g}\",\"interface\":\"{iface}\",\"port\":{port},\"allow\":[{}]}}",
            allow
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    json.push_str("]}");
    (yaml, json)
}

/// Median wall time of `f` over `ROUNDS` runs, in ms.
fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[ROUNDS / 2]
}

/// (YAML bytes, YAML ms, JSON ms, serde_yaml alone ms) for a policy of `grants`
/// entries. serde_yaml alone is the floor loopgate's own checks add to.
fn measure(grants: usize) -> (usize, f64, f64, f64) {
    let (yaml, json) = policy(grants);
    let parsed = loopgate::policy::parse(&yaml, "bench").expect("the YAML parses");
    let same: loopgate::policy::Policy = serde_json::from_str(&json).expect("the JSON parses");
    assert_eq!(parsed.grants.len(), same.grants.len());
    let y = median_ms(|| {
        loopgate::policy::parse(&yaml, "bench").expect("parses");
    });
    let j = median_ms(|| {
        serde_json::from_str::<loopgate::policy::Policy>(&json).expect("parses");
    });
    let s = median_ms(|| {
        serde_yaml::from_str::<loopgate::policy::Policy>(&yaml).expect("parses");
    });
    (yaml.len(), y, j, s)
}

fn main() {
    let mb: f64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("MB is a number"))
        .unwrap_or(10.0);
    // One entry is about 388 bytes of YAML.
    let grants = ((mb * 1_000_000.0) / 388.0) as usize;
    let (small_bytes, small_yaml, small_json, _) = measure(grants / 10);
    let (bytes, yaml, json, serde_yaml) = measure(grants);
    println!(
        "{{\"kind\":\"parse\",\"grants\":{grants},\"yaml_bytes\":{bytes},\"yaml_ms\":{yaml:.1},\"json_ms\":{json:.1},\"serde_yaml_ms\":{serde_yaml:.1},\"yaml_over_json\":{:.2},\"tenth_bytes\":{small_bytes},\"tenth_yaml_ms\":{small_yaml:.1},\"tenth_json_ms\":{small_json:.1},\"yaml_growth\":{:.2}}}",
        yaml / json,
        yaml / small_yaml
    );
}
