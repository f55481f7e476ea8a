#!/bin/sh
# Installs what is needed, builds, and runs every test: the workspace's unit
# tests, the guest driver build (if guest-driver/Makefile exists), every fuzz
# target for 60 s (XPMEM_FUZZ_SECS) beside the end-to-end groups on the KVM
# test host. Ends with one summary line
# `N passed, N failed, N skipped`; exits non-zero if anything failed.
set -u
. "$(dirname "$0")/lib.sh"
start=$(date +%s)
log=$repo/build/test-logs
mkdir -p "$log"
passed=0 failed=0 skipped=0
failures=

fail() { failed=$((failed + 1)); failures="$failures\n  $1"; }

install_deps
# On CI the KVM tests must run, not skip (XPMEM_REQUIRE_KVM turns a skip into a failure).
if [ "${CI:-}" = true ]; then
	export XPMEM_REQUIRE_KVM=1
fi

# 1. Build everything.
if build_all >"$log/build.txt" 2>&1; then
	passed=$((passed + 1))
	say "build: ok"
else
	cat "$log/build.txt"
	fail "build (cargo build --workspace)"
fi

# 2. Style: rustfmt and clippy with warnings as errors.
say "cargo fmt --check"
if (cd "$repo" && cargo fmt --all -- --check) >"$log/fmt.txt" 2>&1; then
	passed=$((passed + 1))
else
	head -40 "$log/fmt.txt"
	fail "cargo fmt --check (see $log/fmt.txt)"
fi
say "cargo clippy --workspace --all-targets -- -D warnings (and the libraries alone, without the tests' features)"
if (cd "$repo" && cargo clippy --workspace --all-targets --target "$triple" -- -D warnings &&
	cargo clippy --workspace --target "$triple" -- -D warnings) >"$log/clippy.txt" 2>&1; then
	passed=$((passed + 1))
else
	grep -E '^(error|warning)' -A6 "$log/clippy.txt" | head -60
	fail "cargo clippy (see $log/clippy.txt)"
fi

# 3. Unit and integration tests of the workspace.
# Property tests use one fixed seed here, so a run is repeatable and a failure in CI
# reproduces with the same command; scripts/fuzz.sh explores with fresh seeds.
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261206}"
if cargo nextest --version >/dev/null 2>&1; then
	say "cargo nextest run --workspace"
	(cd "$repo" && cargo nextest run --workspace --no-fail-fast --target "$triple") >"$log/unit.txt" 2>&1
	rc=$?
	sum=$(grep -E '^ *Summary' "$log/unit.txt" | tail -1)
	p=$(echo "$sum" | sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p')
	f=$(echo "$sum" | sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p')
	s=$(echo "$sum" | sed -n 's/.* \([0-9][0-9]*\) skipped.*/\1/p')
	# Doc tests are not run by nextest.
	(cd "$repo" && cargo test --workspace --doc --target "$triple") >>"$log/unit.txt" 2>&1 || rc=1
else
	say "cargo test --workspace"
	(cd "$repo" && cargo test --workspace --no-fail-fast --target "$triple") >"$log/unit.txt" 2>&1
	rc=$?
	p=0 f=0 s=0
fi
# Count cargo test's per-binary result lines (nextest's counts above otherwise).
for line in $(grep -E '^test result:' "$log/unit.txt" | sed 's/[^0-9;]//g; s/;/ /g' | awk '{print $1":"$2":"$3}'); do
	p=$((${p:-0} + ${line%%:*}))
	rest=${line#*:}
	f=$((${f:-0} + ${rest%%:*}))
	s=$((${s:-0} + ${rest#*:}))
done
p=${p:-0} f=${f:-0} s=${s:-0}
grep -E '^test .* FAILED$|^ *FAIL ' "$log/unit.txt" || true
# What a failing test said (panic message, proptest's minimal input), so a CI log is
# enough to reproduce it.
grep -E -A14 'panicked at|minimal failing input' "$log/unit.txt" | head -80 || true
if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
	grep -E '^error' -A5 "$log/unit.txt" | head -40
	f=1
	failures="$failures\n  cargo test (did not complete; see $log/unit.txt)"
fi
say "unit tests: $p passed, $f failed, $s ignored"
passed=$((passed + p))
failed=$((failed + f))
[ "$f" != 0 ] && failures="$failures\n  unit tests: $f failed (see $log/unit.txt)"

# 4. The guest kernel driver builds against the Debian kernel headers,
# warning-free with W=1, and so do the library and the guest tools.
if [ -e "$repo/guest-driver/Makefile" ]; then
	kver=$(guest_kernel_release)
	say "make -C guest-driver check all (xpmem.ko for $kver; W=1, warnings are errors)"
	if make -C "$repo/guest-driver" KVER="$kver" check all >"$log/guest-driver.txt" 2>&1; then
		passed=$((passed + 1))
	else
		tail -30 "$log/guest-driver.txt"
		fail "guest-driver build (see $log/guest-driver.txt)"
	fi
fi

# 5. Fuzzing, 60 s per target (scripts/fuzz.sh), beside the end-to-end groups. Those run
# in one lane per CPU (a nested test host's QEMU is one TCG thread), so the fuzzing
# shares the CPUs with them: niced, but not so far that its rounds would starve.
fuzz_secs=${XPMEM_FUZZ_SECS:-60}
say "fuzzing every target for ${fuzz_secs}s in the background (log $log/fuzz.txt)"
# The debug test binaries of step 3 are reused: nothing is compiled beside the e2e run.
# Its own session, so that all of it can be stopped if it overruns (below).
FUZZ_PROFILE=debug setsid nice -n 5 "$repo/scripts/fuzz.sh" "$fuzz_secs" >"$log/fuzz.txt" 2>&1 &
fuzz_pid=$!

# 6. End-to-end groups on the KVM test host.
if [ -x "$bindir/xpmem-e2e" ] && [ -x "$bindir/xpmem-vmm" ]; then
	say "end-to-end tests (xpmem-e2e test: the first group, then the others in parallel lanes)"
	"$bindir/xpmem-e2e" test --vmm "$bindir/xpmem-vmm" 2>&1 | tee "$log/e2e.txt"
	sum=$(grep -E '^e2e: [0-9]+ passed' "$log/e2e.txt" | tail -1)
	if [ -n "$sum" ]; then
		p=$(echo "$sum" | sed 's/e2e: \([0-9]*\) passed.*/\1/')
		f=$(echo "$sum" | sed 's/.* \([0-9]*\) failed.*/\1/')
		s=$(echo "$sum" | sed 's/.* \([0-9]*\) skipped.*/\1/')
		passed=$((passed + p))
		failed=$((failed + f))
		skipped=$((skipped + s))
		[ "$f" != 0 ] && failures="$failures\n  e2e: $f failed (see $log/e2e.txt)"
	else
		fail "e2e harness did not finish (see $log/e2e.txt)"
	fi
else
	fail "e2e: binaries missing ($bindir/xpmem-e2e, $bindir/xpmem-vmm); the build failed"
fi

# Each fuzz round has its own hang limit; this bounds the whole phase, so a run
# always ends with its summary.
fuzz_wait=${XPMEM_FUZZ_WAIT:-1200}
say "waiting for the fuzzing to finish (at most ${fuzz_wait}s more)"
waited=0
while kill -0 "$fuzz_pid" 2>/dev/null && [ "$waited" -lt "$fuzz_wait" ]; do
	sleep 5
	waited=$((waited + 5))
done
if kill -0 "$fuzz_pid" 2>/dev/null; then
	kill -KILL -- "-$fuzz_pid" 2>/dev/null
	wait "$fuzz_pid" 2>/dev/null
	tail -5 "$log/fuzz.txt"
	fail "fuzzing did not end ${fuzz_wait}s after the end-to-end groups; stopped (see $log/fuzz.txt and build/fuzz/)"
elif wait "$fuzz_pid"; then
	passed=$((passed + 1))
else
	fail "fuzzing (see $log/fuzz.txt)"
fi
grep -v '^==>' "$log/fuzz.txt" | grep -E 'inputs,|cases,|executions|FAILED' | sed 's/^/  fuzz: /'

elapsed=$(($(date +%s) - start))
say "total time ${elapsed}s"
if [ -n "$failures" ]; then
	printf 'failures:%b\n' "$failures"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
