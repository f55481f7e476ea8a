#!/bin/sh
# Long fuzzing, outside ./scripts/test.sh (which runs every fuzz target's
# smoke corpus and every property test once, with fixed seeds):
#   scripts/fuzz.sh [SECONDS]      each target for SECONDS (default 3600)
# Targets, each with fresh seeds until its time is up:
#   - the device fuzz entry points (virtio-xpmem requests, virtio-blk
#     requests, virtio-net frames, virtio-vsock packets): with libFuzzer (`cargo +nightly fuzz run`,
#     coverage-guided) when a nightly toolchain and cargo-fuzz are there,
#     otherwise through their smoke tests with a new FUZZ_SMOKE_SEED each round;
#   - the xpmem domain's model and hostile-guest property tests and the
#     virtio-mmio transport's, with a new PROPTEST_RNG_SEED each round.
# Prints per target the inputs run and the failures, each failure with the
# command that reproduces it; a round that does not end within FUZZ_ROUND_LIMIT
# seconds (default SECONDS + 600) is killed and counted as a hang. Exits 1 if
# anything failed or hung. Logs: build/fuzz/.
# FUZZ_PROFILE=debug runs the test binaries the unit tests already built (what
# scripts/test.sh does, so its fuzzing compiles nothing); the default, release,
# runs several times more inputs per second.
set -u
. "$(dirname "$0")/lib.sh"
secs=${1:-3600}
case $secs in '' | *[!0-9]*) die "usage: scripts/fuzz.sh [SECONDS per target]" ;; esac
out=$repo/build/fuzz
mkdir -p "$out"
install_deps
cd "$repo" || exit 1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
failed=0
summary=
# Inputs per round: a round is one test run with one seed, the unit of a failure report.
case ${FUZZ_PROFILE:-release} in
release) profile=--release per=2000 ;;
debug) profile= per=500 ;;
*) die "FUZZ_PROFILE must be release or debug" ;;
esac
# A round that runs past this is a hang (an input the device never finishes with):
# it is killed and reported with its seed, like a crash.
round_limit=${FUZZ_ROUND_LIMIT:-$((secs + 600))}

seed() { od -An -N8 -tx8 /dev/urandom | tr -d ' \n'; }
note() { summary="$summary\n$1"; say "$1"; }

have_libfuzzer() {
	cargo +nightly --version >/dev/null 2>&1 && cargo +nightly fuzz --version >/dev/null 2>&1
}

# libFuzzer: one run of SECS seconds; its last stats line has the count.
libfuzzer() { # crate-dir target
	log=$out/$(basename "$1")-$2.log
	say "cargo +nightly fuzz run $2 in $1 for $secs s"
	if (cd "$1" && cargo +nightly fuzz run "$2" -- -max_total_time="$secs" -timeout=30) >"$log" 2>&1; then
		n=$(grep -o '#[0-9]*' "$log" | tail -1 | tr -d '#')
		note "$1 $2 (libFuzzer): ${n:-?} executions, no crash"
	else
		failed=$((failed + 1))
		note "$1 $2 (libFuzzer): FAILED, see $log (crash input under $1/fuzz/artifacts/$2/)"
	fi
}

# A smoke test or property test, round after round with fresh seeds.
rounds() { # label env-var per-round-count unit cargo-test-args...
	label=$1 var=$2 per=$3 unit=$4
	shift 4
	n=0 bad=0
	log=$out/$(echo "$label" | tr ' /' '--').log
	# Built once up front: a build error is not a fuzz failure.
	if ! cargo test -q $profile --target "$triple" --no-run "$@" >"$log" 2>&1; then
		tail -20 "$log"
		die "$label does not build (see $log)"
	fi
	end=$(($(date +%s) + secs))
	say "$label: rounds of $per $unit (per test) until $secs s are up (log $log)"
	while [ "$(date +%s)" -lt "$end" ]; do
		s=0x$(seed)
		echo "==> round with $var=$s" >>"$log"
		timeout -k 10 "$round_limit" env "$var=$s" FUZZ_SMOKE_ITERS="$per" PROPTEST_CASES="$per" \
			cargo test -q $profile --target "$triple" "$@" >>"$log" 2>&1
		rc=$?
		repro="$var=$s FUZZ_SMOKE_ITERS=$per PROPTEST_CASES=$per cargo test $profile --target $triple $*"
		if [ $rc = 124 ] || [ $rc = 137 ]; then
			bad=$((bad + 1))
			case $var in
			FUZZ_SMOKE_SEED) find="FUZZ_WRITE_SEEDS=<dir> $repro (the newest file is the input that hung)" ;;
			*) find="$repro -- --nocapture" ;;
			esac
			note "$label: HUNG, a round of $per did not end within ${round_limit}s with $var=$s; find the input: $find"
		elif [ $rc != 0 ]; then
			bad=$((bad + 1))
			note "$label: FAILED with $var=$s; reproduce: $repro"
		fi
		n=$((n + per))
	done
	[ $bad = 0 ] || failed=$((failed + 1))
	note "$label: $n $unit, $bad failed round(s)"
}

for t in virtio-xpmem:requests virtio-blk:requests virtio-net:frames virtio-vsock:packets; do
	dir=vmm/${t%%:*} target=${t#*:}
	if have_libfuzzer; then
		libfuzzer "$dir" "$target"
	else
		# fuzz_smoke needs the crate's `fuzzing` feature; the crate's dev-dependency
		# on itself turns it on, so this is the binary `cargo test --workspace` built.
		# The package name is the first `name =` line (the [package] one).
		rounds "$dir fuzz_smoke" FUZZ_SMOKE_SEED "$per" inputs \
			-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)" --test fuzz_smoke
	fi
done
have_libfuzzer || say "no nightly cargo-fuzz: ran the fuzz entry points on pseudo-random inputs (rustup toolchain install nightly && cargo install cargo-fuzz for coverage-guided runs)"
rounds "xpmem-domain model" PROPTEST_RNG_SEED "$per" cases -p xpmem-domain --test model
rounds "xpmem-domain hostile" PROPTEST_RNG_SEED "$per" cases -p xpmem-domain --test hostile
rounds "virtio-mmio transport" PROPTEST_RNG_SEED "$per" cases -p virtio-mmio-transport --lib

printf "%b\n" "$summary"
if [ $failed = 0 ]; then
	say "fuzz: every target ran $secs s without a failure"
else
	say "fuzz: $failed target(s) failed"
	exit 1
fi
