//! Running the end-to-end groups in parallel lanes.
//!
//! The nested test host is one single-threaded TCG vCPU: a group keeps one
//! host CPU busy, whatever the machine has. `xpmem-e2e test --lanes N`
//! therefore runs the first group alone (it fills the shared caches: the
//! Debian packages are unpacked without locking), then splits the rest over
//! N child processes of itself (`test --lanes 1 GROUP..`), each with its own
//! nested host. Groups go to the lane with the least expected work, longest
//! first ([`plan`], from [`expected_secs`]). Every line a child prints is
//! echoed with its lane's tag; its result lines (`PASS`/`FAIL`/`SKIP`) are
//! collected, so the parent prints one result list and one summary as a
//! single run does.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::cases::{CaseResult, Status};

/// Seconds a group takes on the nested host with two lanes and the fuzzing
/// beside it (CI on a fresh clone, 2026-12-06: a lane slows the other; the net
/// group's TCP transfer the most, 623 s against 310 s alone): the weights of
/// [`plan`]. A group not listed counts as 60 s.
pub fn expected_secs(group: &str) -> u64 {
    match group {
        "errors" => 24,
        "boot" => 75,
        "xpmem" => 436,
        "disk" => 82,
        "rootdisk" => 114,
        "net" => 623,
        "tap" => 39,
        "vsock" => 91,
        "kill" => 178,
        "scale" => 250,
        _ => 60,
    }
}

/// Splits `groups` over `lanes` lanes: longest group first, each to the lane
/// with the least expected work so far. Lanes keep the order groups were
/// given in; empty lanes are left out.
pub fn plan(groups: &[String], lanes: usize) -> Vec<Vec<String>> {
    let lanes = lanes.max(1);
    let mut order: Vec<(usize, &String)> = groups.iter().enumerate().collect();
    order.sort_by_key(|(i, g)| (std::cmp::Reverse(expected_secs(g)), *i));
    let mut load = vec![0u64; lanes];
    let mut assigned: Vec<Vec<(usize, String)>> = vec![Vec::new(); lanes];
    for (i, g) in order {
        let lane = (0..lanes).min_by_key(|&l| (load[l], l)).unwrap_or(0);
        load[lane] += expected_secs(g);
        assigned[lane].push((i, g.clone()));
    }
    assigned
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(|mut l| {
            l.sort_by_key(|(i, _)| *i);
            l.into_iter().map(|(_, g)| g).collect()
        })
        .collect()
}

/// A result line a lane printed (`PASS name`, `FAIL name: why`, `SKIP
/// name: why`), as the case it reports.
pub fn result_line(line: &str) -> Option<CaseResult> {
    if let Some(name) = line.strip_prefix("PASS ") {
        return Some(CaseResult {
            name: name.to_string(),
            status: Status::Pass,
        });
    }
    let (verdict, rest) = line.split_once(' ')?;
    let (name, why) = rest.split_once(": ")?;
    let status = match verdict {
        "FAIL" => Status::Fail(why.to_string()),
        "SKIP" => Status::Skip(why.to_string()),
        _ => return None,
    };
    Some(CaseResult {
        name: name.to_string(),
        status,
    })
}

/// Runs each of `lanes` as `exe test <flags> --lanes 1 GROUP..` at once,
/// echoing every line with the lane's tag; returns every lane's results, in
/// lane order. A lane that printed no summary line adds a failed
/// `lane-N/summary` case.
pub fn run(exe: &Path, flags: &[String], lanes: &[Vec<String>]) -> Vec<CaseResult> {
    let (tx, rx) = mpsc::channel::<(usize, Option<String>)>();
    let mut children = Vec::new();
    for (n, groups) in lanes.iter().enumerate() {
        println!("[e2e] lane {}: {}", n + 1, groups.join(" "));
        let spawned = Command::new(exe)
            .arg("test")
            .args(flags)
            .args(["--lanes", "1"])
            .args(groups)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                println!("[e2e] lane {}: cannot start {}: {e}", n + 1, exe.display());
                let _ = tx.send((n, None));
                continue;
            }
        };
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send((n, Some(line))).is_err() {
                        return;
                    }
                }
            });
        }
        children.push(child);
    }
    drop(tx);
    let mut results: Vec<Vec<CaseResult>> = vec![Vec::new(); lanes.len()];
    let mut summarized = vec![false; lanes.len()];
    for (n, line) in rx {
        let Some(line) = line else { continue };
        println!("[lane {}] {line}", n + 1);
        if let Some(r) = result_line(&line) {
            results[n].push(r);
        } else if line.starts_with("e2e: ") && line.contains(" passed, ") {
            summarized[n] = true;
        }
    }
    for mut child in children {
        let _ = child.wait();
    }
    let mut all = Vec::new();
    for (n, (r, done)) in results.into_iter().zip(summarized).enumerate() {
        all.extend(r);
        if !done {
            all.push(CaseResult {
                name: format!("lane-{}/summary", n + 1),
                status: Status::Fail(format!(
                    "lane {} ({}) ended without its summary line; see its lines above",
                    n + 1,
                    lanes[n].join(" ")
                )),
            });
        }
    }
    all
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code
mod tests {
    use super::*;

    fn groups(list: &str) -> Vec<String> {
        list.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_default_groups_split_into_two_lanes_of_similar_work() {
        let lanes = plan(&groups("boot xpmem disk rootdisk net tap vsock kill"), 2);
        assert_eq!(lanes.len(), 2);
        let work: Vec<u64> = lanes
            .iter()
            .map(|l| l.iter().map(|g| expected_secs(g)).sum())
            .collect();
        let total: u64 = work.iter().sum();
        assert_eq!(total, 75 + 436 + 82 + 114 + 623 + 39 + 91 + 178);
        assert!(
            work.iter().all(|w| *w * 10 <= total * 6),
            "{lanes:?} {work:?}"
        );
        // Every group once, in the given order within its lane.
        let mut seen: Vec<&String> = lanes.iter().flatten().collect();
        seen.sort();
        assert_eq!(seen.len(), 8);
        seen.dedup();
        assert_eq!(seen.len(), 8);
        // The two longest groups go to different lanes.
        let lane_of = |g: &str| lanes.iter().position(|l| l.iter().any(|x| x == g));
        assert_ne!(lane_of("xpmem"), lane_of("net"));
    }

    #[test]
    fn one_lane_or_few_groups_keep_the_order() {
        assert_eq!(plan(&groups("net boot"), 1), vec![groups("net boot")]);
        assert_eq!(plan(&groups("boot"), 3), vec![groups("boot")]);
        assert!(plan(&[], 2).is_empty());
    }

    #[test]
    fn result_lines_parse_back_into_cases() {
        let r = result_line("PASS net/transfer/same-sum").unwrap();
        assert_eq!(
            (r.name.as_str(), r.status),
            ("net/transfer/same-sum", Status::Pass)
        );
        let r = result_line("FAIL kill/idle/killed: the broker says VM vz: x").unwrap();
        assert_eq!(r.name, "kill/idle/killed");
        assert_eq!(r.status, Status::Fail("the broker says VM vz: x".into()));
        let r = result_line("SKIP tap/*: no CAP_NET_ADMIN").unwrap();
        assert_eq!(r.status, Status::Skip("no CAP_NET_ADMIN".into()));
        assert!(result_line("[L1] PASS something").is_none());
        assert!(result_line("FAILED to start").is_none());
    }
}
