//! The console relay: passes short messages between guests of one monitor
//! run by reading their consoles and typing into their serial ports.
//!
//! Guests only have a serial console to talk to the outside, so a segid that
//! VM `a` exports reaches VM `b` like this: `a` prints a line, the relay
//! (running beside the monitor on the test host) reads it from the monitor's
//! output and writes a line into `b`'s input FIFO (the monitor's per-VM
//! `input = PATH`), which `b`'s 8250 UART receives.
//!
//! Console protocol (anywhere in a `[vm-NAME] ` line):
//!
//! * `XPMEM-TEST <case> SEGID <n> TO <vm>[,<vm>...]`: types `SEGID <n>` into
//!   each listed VM.
//! * `XPMEM-POST <vm> <text>`: types `<text>` into `<vm>`.
//! * `XPMEM-POST-AT-EXIT <vm> <text>`: types `<text>` into `<vm>` once the
//!   monitor reports that the printing VM has ended (`xpmem-vmm: VM NAME: ...`).
//! * `XPMEM-TEST <case> WAITING <WORD>`: the VM is ready to read one line
//!   starting with `<WORD>` (`SEGID`, `DONE`, `GONE`, `READY`, ...).
//!
//! A message is typed only when its VM waits for a line with the message's
//! first word: the guest's serial driver drops input that arrives while no
//! process has the console open, so messages wait in the relay until someone
//! reads, and a message for a later step (another word) never overtakes the
//! one the VM reads now. Messages with the same first word keep their order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Routing state; feed it every line of the monitor's output.
#[derive(Debug, Default)]
pub struct Router {
    /// Messages not yet typed, per destination VM.
    queued: BTreeMap<String, VecDeque<String>>,
    /// First words the VM waits for, oldest first (one per WAITING line not
    /// yet answered).
    readers: BTreeMap<String, VecDeque<String>>,
    /// Messages to post once their source VM has ended: (source, dest, text).
    at_exit: Vec<(String, String, String)>,
    /// VMs the monitor reported as ended.
    ended: BTreeSet<String>,
}

/// One line to type into one VM's serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typed {
    /// Destination VM.
    pub vm: String,
    /// The line, without its newline.
    pub text: String,
}

impl Router {
    /// Takes one output line; returns what to type now, in order.
    pub fn feed(&mut self, line: &str) -> Vec<Typed> {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(rest) = line.strip_prefix("xpmem-vmm: VM ") {
            // "xpmem-vmm: VM c: powered off after 12.00 s"; not "VM c: booting".
            if let Some((vm, what)) = rest.split_once(": ") {
                if what.contains(" after ") && !what.starts_with("booting") {
                    self.vm_ended(vm);
                }
            }
            return self.deliver();
        }
        let Some((src, text)) = line
            .strip_prefix("[vm-")
            .and_then(|rest| rest.split_once(']'))
        else {
            return Vec::new();
        };
        let src = src.to_string();
        if let Some(rest) = after(text, "XPMEM-POST-AT-EXIT ") {
            if let Some((dest, msg)) = split_message(rest) {
                self.at_exit.push((src.clone(), dest, msg));
                if self.ended.contains(&src) {
                    self.vm_ended(&src);
                }
            }
        } else if let Some(rest) = after(text, "XPMEM-POST ") {
            if let Some((dest, msg)) = split_message(rest) {
                self.queue(&dest, msg);
            }
        } else if let Some(rest) = after(text, "XPMEM-TEST ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                [_, "SEGID", n, "TO", dests] if n.bytes().all(|b| b.is_ascii_digit()) => {
                    for dest in dests.split(',').filter(|d| !d.is_empty()) {
                        self.queue(dest, format!("SEGID {n}"));
                    }
                }
                [_, "WAITING", word, ..] => self
                    .readers
                    .entry(src)
                    .or_default()
                    .push_back(word.to_string()),
                _ => {}
            }
        }
        self.deliver()
    }

    /// Messages still queued (for the end-of-run report).
    pub fn undelivered(&self) -> Vec<Typed> {
        self.queued
            .iter()
            .flat_map(|(vm, q)| {
                q.iter().map(|t| Typed {
                    vm: vm.clone(),
                    text: t.clone(),
                })
            })
            .collect()
    }

    fn queue(&mut self, dest: &str, text: String) {
        self.queued
            .entry(dest.to_string())
            .or_default()
            .push_back(text);
    }

    fn vm_ended(&mut self, vm: &str) {
        self.ended.insert(vm.to_string());
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.at_exit)
            .into_iter()
            .partition(|(src, _, _)| src == vm);
        self.at_exit = keep;
        for (_, dest, text) in due {
            self.queue(&dest, text);
        }
    }

    /// Answers each VM's oldest WAITING with the oldest queued message that
    /// starts with the word it waits for, as long as there is one.
    fn deliver(&mut self) -> Vec<Typed> {
        let mut out = Vec::new();
        for (vm, queue) in &mut self.queued {
            let Some(waits) = self.readers.get_mut(vm) else {
                continue;
            };
            while let Some(word) = waits.front() {
                let Some(pos) = queue
                    .iter()
                    .position(|t| t.split_whitespace().next() == Some(word.as_str()))
                else {
                    break;
                };
                waits.pop_front();
                if let Some(text) = queue.remove(pos) {
                    out.push(Typed {
                        vm: vm.clone(),
                        text,
                    });
                }
            }
        }
        out
    }
}

fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|i| &text[i + marker.len()..])
}

/// `"<vm> <text>"` with a valid VM name and non-empty text.
fn split_message(rest: &str) -> Option<(String, String)> {
    let (dest, msg) = rest.trim().split_once(' ')?;
    let valid = !dest.is_empty()
        && dest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    let msg = msg.trim();
    (valid && !msg.is_empty()).then(|| (dest.to_string(), msg.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn typed(vm: &str, text: &str) -> Typed {
        Typed {
            vm: vm.into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_segid_waits_for_a_reader_in_each_destination() {
        let mut r = Router::default();
        assert!(r
            .feed("[vm-a] [ 3.1] XPMEM-TEST export-multi SEGID 77 TO b,c")
            .is_empty());
        assert_eq!(
            r.feed("[vm-c] [ 4.0] XPMEM-TEST attach-multi WAITING SEGID\r"),
            vec![typed("c", "SEGID 77")]
        );
        assert_eq!(r.undelivered(), vec![typed("b", "SEGID 77")]);
        assert_eq!(
            r.feed("[vm-b] XPMEM-TEST attach-multi WAITING SEGID"),
            vec![typed("b", "SEGID 77")]
        );
        // A reader with nothing queued gets the next message as soon as it comes.
        assert!(r.feed("[vm-b] XPMEM-TEST attach WAITING SEGID").is_empty());
        assert_eq!(
            r.feed("[vm-a] XPMEM-TEST export SEGID 78 TO b"),
            vec![typed("b", "SEGID 78")]
        );
        assert!(r.undelivered().is_empty());
    }

    #[test]
    fn a_reader_gets_the_word_it_waits_for_even_if_another_came_first() {
        let mut r = Router::default();
        r.feed("[vm-a] XPMEM-TEST w SEGID 9 TO c");
        r.feed("[vm-b] XPMEM-POST c READY b");
        assert_eq!(
            r.feed("[vm-c] XPMEM-TEST p WAITING READY"),
            vec![typed("c", "READY b")]
        );
        assert_eq!(
            r.feed("[vm-c] XPMEM-TEST p WAITING SEGID"),
            vec![typed("c", "SEGID 9")]
        );
        // A wait for a word nobody sent holds later waits of that VM back.
        r.feed("[vm-c] XPMEM-TEST q WAITING GONE");
        r.feed("[vm-c] XPMEM-TEST q WAITING SEGID");
        assert!(r.feed("[vm-a] XPMEM-TEST w SEGID 10 TO c").is_empty());
        assert_eq!(
            r.feed("[vm-a] XPMEM-POST c GONE a"),
            vec![typed("c", "GONE a"), typed("c", "SEGID 10")]
        );
    }

    #[test]
    fn messages_keep_their_order_per_vm() {
        let mut r = Router::default();
        r.feed("[vm-a] XPMEM-TEST e SEGID 1 TO c");
        r.feed("[vm-b] XPMEM-TEST e SEGID 2 TO c");
        r.feed("[vm-b] XPMEM-POST c DONE b");
        r.feed("[vm-c] XPMEM-TEST x WAITING SEGID");
        assert_eq!(
            r.feed("[vm-c] XPMEM-TEST x WAITING SEGID"),
            vec![typed("c", "SEGID 2")]
        );
        assert_eq!(
            r.feed("[vm-c] XPMEM-TEST y WAITING DONE"),
            vec![typed("c", "DONE b")]
        );
    }

    #[test]
    fn at_exit_messages_go_out_when_the_monitor_reports_the_vm_ended() {
        let mut r = Router::default();
        r.feed("[vm-a] XPMEM-TEST gone WAITING VMEXIT");
        assert!(r.feed("[vm-c] XPMEM-POST-AT-EXIT a VMEXIT c").is_empty());
        // Booting is not ending; another VM ending is not c ending.
        assert!(r
            .feed("xpmem-vmm: VM c: booting vmlinuz (1 vCPUs, 512 MiB, console stdout)")
            .is_empty());
        assert!(r
            .feed("xpmem-vmm: VM b: powered off after 9.00 s")
            .is_empty());
        assert_eq!(
            r.feed("xpmem-vmm: VM c: powered off after 12.50 s"),
            vec![typed("a", "VMEXIT c")]
        );
        // The monitor's report may overtake the guest's line on another pipe.
        let mut r = Router::default();
        r.feed("xpmem-vmm: VM c: powered off after 1.00 s");
        r.feed("[vm-a] XPMEM-TEST gone WAITING VMEXIT");
        assert_eq!(
            r.feed("[vm-c] XPMEM-POST-AT-EXIT a VMEXIT c"),
            vec![typed("a", "VMEXIT c")]
        );
    }

    #[test]
    fn malformed_lines_route_nothing() {
        let mut r = Router::default();
        for line in [
            "XPMEM-TEST e SEGID 5 TO b",         // not a VM console line
            "[vm-a] XPMEM-TEST e SEGID x5 TO b", // not a number
            "[vm-a] XPMEM-TEST e SEGID 5",       // no destination
            "[vm-a] XPMEM-POST b",               // no text
            "[vm-a] XPMEM-POST ../b text",       // not a VM name
            "[vm-a XPMEM-POST b text",           // no closing bracket
        ] {
            r.feed(line);
        }
        r.feed("[vm-b] XPMEM-TEST t WAITING SEGID");
        assert!(r.undelivered().is_empty());
        assert!(r.feed("[vm-b] XPMEM-TEST t WAITING SEGID").is_empty());
    }
}
