# Sourced by net-a.sh, net-b.sh and net-c.sh (the e2e `net` group: VMs a, b
# and c under one monitor, on its switch). Every check prints one line
# "XPMEM-TEST <check> PASS|FAIL ..."; every wait and every loop is bounded.
# Kernel command line: xpmem.peers6=a@fe80::..,b@..,c@.. (each VM's IPv6
# link-local address as the harness derives it from the MAC the monitor
# derives from the name), xpmem.netbytes=N (the a->b transfer),
# xpmem.floodbytes=N (the a->b transfer under c's flood), xpmem.floodsecs=S
# (longest flood by c).
rc=0
me=$(hostname)
res() {
	echo "XPMEM-TEST $1 $2${3:+ $3}"
	[ "$2" = PASS ] || rc=1
}
arg() { sed -n "s/.*[[:space:]]xpmem\.$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }
addr_of() { awk -v n="$1" '$2 == n { print $1; exit }' /etc/hosts; }
v6_of() { arg peers6 | tr ',' '\n' | sed -n "s/^$1@//p"; }
bytes=$(arg netbytes)
floodbytes=$(arg floodbytes)
floodsecs=$(arg floodsecs)
# nc to $1 port $2 (stdin goes along) until it connects, for $3 s at most.
send_to() {
	i=0
	while [ $i -lt "$3" ]; do
		nc -w 5 "$1" "$2" && return 0
		sleep 1
		i=$((i + 1))
	done
	return 1
}
# Own addresses: eth0 has xpmem.ip and, once DAD is done, the IPv6
# link-local address from its MAC (30 s at most).
check_addr() {
	want4=$(arg ip)
	want6=$(v6_of "$me")
	i=0
	while [ $i -lt 300 ]; do
		ip -6 addr show dev eth0 | grep "inet6 $want6/64" | grep -qv tentative && break
		sleep 0.1
		i=$((i + 1))
	done
	have=$(ip addr show dev eth0 | awk '/inet6? / { printf "%s ", $2 }')
	ok6=
	case " $have" in
	*" $want4 "*) ok4=1 ;;
	*) ok4= ;;
	esac
	case " $have" in
	*" $want6/64 "*) ip -6 addr show dev eth0 | grep "inet6 $want6/64" | grep -q tentative || ok6=$ok4 ;;
	*) ok6= ;;
	esac
	if [ -n "$ok6" ]; then
		res "addr/$me" PASS "$have"
	else
		res "addr/$me" FAIL "eth0 has [$have], want $want4 and $want6/64 (not tentative)"
	fi
	[ "$(addr_of "$me")" = "${want4%/*}" ] || res "hosts/$me" FAIL "/etc/hosts: $(tr '\n' ';' </etc/hosts)"
}
# One ping check: wait until the peer answers once (it may still boot; 60
# tries of at most 3 s), then 3 of 3 must come back.
ping_check() { # check target command...
	check=$1
	target=$2
	shift 2
	i=0
	while [ $i -lt 60 ] && ! "$@" -c 1 -W 2 "$target" >/dev/null 2>&1; do
		sleep 1
		i=$((i + 1))
	done
	out=$("$@" -c 3 -W 5 "$target" 2>&1)
	stats=$(echo "$out" | grep "packets transmitted")
	case "$stats" in
	*"3 packets received"*) res "$check" PASS "$target: $stats" ;;
	*) res "$check" FAIL "$target: ${stats:-$(echo "$out" | tail -1)}" ;;
	esac
}
ping_matrix() {
	for p in a b c; do
		[ "$p" = "$me" ] && continue
		ping_check "ping4/$me-$p" "$p" ping
		ping_check "ping6/$me-$p" "$(v6_of "$p")" ping6 -I eth0
	done
}
