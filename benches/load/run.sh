#!/usr/bin/env bash
# REGISTER load on 127.0.0.1: pbx (with digest) side by side with Kamailio (with and without
# digest), pbx's memory per registration, and an instruction profile of pbx under load.
# docs/PERFORMANCE.md explains the method and records the numbers.
#
# usage: benches/load/run.sh [all|rate|memory|profile|kamailio|check]
#   all       memory, then the rate ramps of every row (default; < 15 minutes once built)
#   rate      rate ramps only
#   memory    pbx's bytes per registration only
#   profile   pbx under callgrind with a short load; prints the top functions
#   kamailio  the Kamailio rows only (needs no pbx)
#   check     one short step per row: proves the harness works end to end
#
# Each row is measured in two phases:
#   search   short steps (STEP_S) from START_RATE, doubling while a step holds, then
#            BISECT_STEPS between the last rate that held and the first that did not;
#   sustain  SUSTAIN_S (longer than RFC 3261 Timer J, 32 s, for which pbx keeps every finished
#            non-INVITE server transaction on UDP) at the rate the search found; if that fails,
#            at the lower of 3/4 of it and 9/10 of the rate the failed step achieved, up to
#            SUSTAIN_TRIES times: the state a server carries per request reaches its steady
#            level within the step.
# pbx is restarted (same data directory) before every step, so no step inherits the
# transactions of the one before. Kamailio answers REGISTER statelessly and keeps running.
#
# Environment (defaults in brackets):
#   STEP_S [10]        seconds of load per search step
#   SUSTAIN_S [40]     seconds of load per sustain step;  SUSTAIN_TRIES [3]
#   START_RATE [2000]  first rate of a ramp, in REGISTER flows per second
#   MAX_RATE [32000]   a ramp stops here
#   BISECT_STEPS [2]   search steps between the last rate that held and the first that did not
#   USERS [10000]      users in the injection file and extensions in pbx (pbx's limit: 10,000)
#   MEM_RATE [1000]    rate of the memory run;  SETTLE_S [35]: wait (> Timer J) before reading RSS
#   DEADLINE_S [780]   no new step starts after this many seconds of measuring
#   PORT_BASE [35060]  pbx SIP; +1 pbx HTTP, +10 Kamailio, +20 SIPp, +30 register_load
#   KAMAILIO_CHILDREN [4]  UDP worker processes of Kamailio
#   PBX_LOG [warn]     RUST_LOG for pbx
#
# A step "holds" when no call failed, the achieved rate is at least 95 % of the target and
# retransmissions stay at or below 1 % of the calls (a retransmission means a datagram was
# dropped or answered late: the server is past its capacity even if every call succeeded).
# A "call" is one registration flow: REGISTER → 200, or REGISTER → 401 → REGISTER → 200.
#
# Load generators: register_load (pbx-benches; answers MD5 and SHA-256) ramps every row; SIPp
# (the reference tool) then runs one step at the rate register_load found, to confirm it.
# register_load runs two kinds of flows: "refresh" keeps one Call-ID per user with a rising
# CSeq, as phones do when they renew a registration (RFC 3261 §10.2.4), and "new Call-ID"
# starts every flow with a fresh Call-ID, as SIPp's scenarios do: each is a new binding, which
# pbx writes to its database before answering. Kamailio keeps bindings in memory either way.
#
# Every process this script starts is stopped on exit. Logs stay in the printed work folder.

set -euo pipefail

MODE=${1:-all}
STEP_S=${STEP_S:-10}
SUSTAIN_S=${SUSTAIN_S:-40}
SUSTAIN_TRIES=${SUSTAIN_TRIES:-3}
START_RATE=${START_RATE:-2000}
MAX_RATE=${MAX_RATE:-32000}
BISECT_STEPS=${BISECT_STEPS:-2}
USERS=${USERS:-10000}
MEM_RATE=${MEM_RATE:-1000}
SETTLE_S=${SETTLE_S:-35}
DEADLINE_S=${DEADLINE_S:-780}
PORT_BASE=${PORT_BASE:-35060}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-4}
PBX_LOG=${PBX_LOG:-warn}
COOLDOWN_S=2

PBX_SIP_PORT=$PORT_BASE
PBX_HTTP_PORT=$((PORT_BASE + 1))
KAM_PORT=$((PORT_BASE + 10))
SIPP_PORT=$((PORT_BASE + 20))
LOAD_PORT=$((PORT_BASE + 30))
REALM=pbx

case $MODE in
all | rate | memory | profile | kamailio | check) ;;
*)
	sed -n '5,13p' "$0"
	exit 2
	;;
esac
if [ "$MODE" = check ]; then
	STEP_S=3 SUSTAIN_S=3 SUSTAIN_TRIES=1 START_RATE=200 MAX_RATE=200 BISECT_STEPS=0 SETTLE_S=5
	USERS=${USERS_CHECK:-1000}
fi

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/pbx-load.XXXXXX)
TICKS=$(getconf CLK_TCK)
STARTED_AT=$(date +%s)
PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	log "logs: $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # pid: stop one process this script started, and forget it
	local pid=$1 keep=() p
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
	PIDS=("${keep[@]+"${keep[@]}"}")
}

# ---- what the run needs ----

ensure_packages() {
	local missing=() pkg
	command -v sipp >/dev/null || missing+=(sip-tester)
	[ -x /usr/bin/time ] || missing+=(time)
	command -v kamailio >/dev/null || missing+=(kamailio)
	if [ "$MODE" = profile ]; then command -v valgrind >/dev/null || missing+=(valgrind); fi
	[ ${#missing[@]} -eq 0 ] && return
	for pkg in "${missing[@]}"; do
		if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
			apt-get update
			break
		fi
	done
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

ensure_ports_free() {
	local port
	for port in "$PBX_SIP_PORT" "$KAM_PORT" "$SIPP_PORT" "$LOAD_PORT"; do
		if ss -Hlun "sport = :$port" 2>/dev/null | grep -q .; then
			log "UDP port $port is in use; set PORT_BASE to another value"
			exit 1
		fi
	done
	if ss -Hltn "sport = :$PBX_HTTP_PORT" 2>/dev/null | grep -q .; then
		log "TCP port $PBX_HTTP_PORT is in use; set PORT_BASE to another value"
		exit 1
	fi
}

build() {
	local bins=(-p pbx-benches --bin register_load)
	[ "$MODE" = kamailio ] || bins+=(-p pbx-node --bin pbx)
	log "cargo build --release ${bins[*]}"
	(cd "$ROOT" && cargo build --release "${bins[@]}")
	LOAD=$ROOT/target/release/register_load
	PBX=$ROOT/target/release/pbx
}

make_users() { # SIPp injection file: user;password;[authentication …] (SIPp cannot nest [field0] in it)
	{
		echo SEQUENTIAL
		seq 10000 $((10000 + USERS - 1)) | awk '{ printf "u%s;pw-u%s;[authentication username=u%s password=pw-u%s]\n", $1, $1, $1, $1 }'
	} >"$WORK/users.csv"
	head -2 "$WORK/users.csv" >"$WORK/one-user.csv"
}

# ---- servers ----

start_kamailio() { # auth|noauth → sets SERVER_PID
	local define=()
	[ "$1" = auth ] && define=(-A WITH_AUTH)
	mkdir -p "$WORK/kamailio-$1"
	kamailio -f "$HERE/kamailio.cfg" -l "udp:127.0.0.1:$KAM_PORT" -n "$KAMAILIO_CHILDREN" -m 256 -M 16 \
		-DD -E -Y "$WORK/kamailio-$1" -P "$WORK/kamailio-$1/kamailio.pid" "${define[@]}" \
		>"$WORK/kamailio-$1.log" 2>&1 &
	SERVER_PID=$!
	PIDS+=("$SERVER_PID")
	SERVER_PORT=$KAM_PORT
	SERVER_KIND=kamailio
	wait_ready "$1" || {
		log "Kamailio did not answer; see $WORK/kamailio-$1.log"
		exit 1
	}
}

write_pbx_config() { # file: every user of users.csv as an extension
	{
		echo '[registrar]'
		echo "realm = \"$REALM\""
		# MD5 first: SIPp 3.6 answers only the first challenge of a 401, and only MD5.
		echo 'digest_algorithms = ["MD5", "SHA-256"]'
		# One source sends everything: a stray failure must not block it for the next steps.
		echo 'auth_failures_max = 1000000'
		tail -n +2 "$WORK/users.csv" | awk -F';' '{ printf "\n[[extensions]]\nnumber = \"%s\"\npassword = \"%s\"\n", $1, $2 }'
	} >"$1"
}

start_pbx() { # name [wrapper…] → sets SERVER_PID
	local name=$1
	shift
	local dir=$WORK/pbx-$name
	mkdir -p "$dir/data"
	write_pbx_config "$dir/pbx.toml"
	RUST_LOG=$PBX_LOG "$@" "$PBX" appliance --data-dir "$dir/data" --config "$dir/pbx.toml" \
		--sip-listen "127.0.0.1:$PBX_SIP_PORT" --http-listen "127.0.0.1:$PBX_HTTP_PORT" >"$dir/pbx.log" 2>&1 &
	SERVER_PID=$!
	PIDS+=("$SERVER_PID")
	SERVER_PORT=$PBX_SIP_PORT
	SERVER_KIND=pbx
	wait_ready auth "${READY_S:-180}" || {
		log "pbx did not answer a REGISTER; see $dir/pbx.log"
		tail -5 "$dir/pbx.log" >&2
		exit 1
	}
}

wait_ready() { # auth|noauth [seconds]: one unregistration (Expires: 0) answered 200
	local auth=none deadline=$(($(date +%s) + ${2:-30}))
	[ "$1" = auth ] && auth=md5
	while [ "$(date +%s)" -lt "$deadline" ]; do
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		if "$LOAD" --target "127.0.0.1:$SERVER_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/one-user.csv" \
			--domain "$REALM" --rate 1 --calls 1 --auth "$auth" --expires 0 --deadline-s 5 >/dev/null 2>&1; then
			return 0
		fi
		sleep 1
	done
	return 1
}

cpu_ticks() { # pid: user+system ticks of the process (all threads) and its child processes
	local total=0 p f
	for p in "$1" $(pgrep -P "$1" || true); do
		f=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue
		set -- $f
		total=$((total + ${12} + ${13}))
	done
	echo "$total"
}

# Datagrams the kernel dropped for lack of receive buffer: on the server's socket, and on the
# whole machine (the difference is mostly the load generator's socket).
socket_drops() { awk -v p="$(printf '%04X' "$1")" 'NR > 1 { split($2, a, ":"); if (a[2] == p) s += $NF } END { print s + 0 }' /proc/net/udp; }
rcvbuf_errors() {
	awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# ---- one step, one ramp ----

# step row generator auth flows rate → prints "ok|fail achieved p99 retrans cpu_us_per_call"; 0 if it held.
# flows: refresh (one Call-ID per user) or new (a new Call-ID per flow; SIPp always does this).
step() {
	local row=$1 gen=$2 auth=$3 flows=$4 rate=$5
	local duration=${DURATION_S:-$STEP_S}
	local calls=$((rate * duration)) inflight=$((rate > 200 ? rate : 200))
	local before after line achieved failed retrans p99 okcalls held=ok gen_cpu=-
	local drops0 errors0 drops errors
	drops0=$(socket_drops "$SERVER_PORT")
	errors0=$(rcvbuf_errors)
	before=$(cpu_ticks "$SERVER_PID")
	if [ "$gen" = sipp ]; then
		local scenario=$HERE/register_noauth.xml stf=$WORK/sipp-$row-$rate.csv
		[ "$auth" = none ] || scenario=$HERE/register_auth.xml
		rm -f "$stf"
		local t0 t1
		t0=$(date +%s.%N)
		timeout $((duration * 3 + 60)) /usr/bin/time -f '%U %S' -o "$WORK/sipp-time" sipp "127.0.0.1:$SERVER_PORT" -sf "$scenario" -inf "$WORK/users.csv" \
			-set domain "$REALM" -set expires 3600 -r "$rate" -rp 1000 -m "$calls" -l "$inflight" \
			-i 127.0.0.1 -p "$SIPP_PORT" -nostdin -buff_size 1048576 -trace_stat -stf "$stf" -fd 1 \
			-timeout $((duration * 3 + 30))s -timeout_error >/dev/null 2>"$WORK/sipp-$row-$rate.err" || true
		t1=$(date +%s.%N)
		gen_cpu=$(awk -v a="$t0" -v b="$t1" '{ printf "%.0f", 100 * ($1 + $2) / (b - a) }' "$WORK/sipp-time" 2>/dev/null || echo -)
		# Fields of SIPp's -trace_stat file: 8 CallRate(C), 16 SuccessfulCall(C), 18 FailedCall(C),
		# 58 Retransmissions(C).
		line=$(tail -1 "$stf" 2>/dev/null || true)
		achieved=$(echo "$line" | awk -F';' '{ printf "%.0f", $8 }')
		okcalls=$(echo "$line" | awk -F';' '{ print $16 + 0 }')
		failed=$(echo "$line" | awk -F';' -v c="$calls" '{ print $18 + (c - $16 - $18) }')
		retrans=$(echo "$line" | awk -F';' '{ print $58 + 0 }')
		p99=-
	else
		line=$("$LOAD" --target "127.0.0.1:$SERVER_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/users.csv" \
			--domain "$REALM" --rate "$rate" --calls "$calls" --auth "$auth" --expires 3600 \
			--call-id "$([ "$flows" = refresh ] && echo per-user || echo per-call)" --max-inflight "$inflight" \
			--deadline-s $((duration * 3 + 30)) 2>&1) || true
		echo "$line" >>"$WORK/register_load.log"
		kv() { echo "$line" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
		achieved=$(kv achieved_rate | awk '{ printf "%.0f", $1 }')
		okcalls=$(kv ok)
		failed=$(kv failed)
		retrans=$(kv retransmissions)
		p99=$(kv latency_ms_p99)
		gen_cpu=$(awk -v c="$(kv cpu_s)" -v e="$(kv elapsed_s)" 'BEGIN { if (e > 0) printf "%.0f", 100 * c / e; else print "-" }')
	fi
	after=$(cpu_ticks "$SERVER_PID")
	drops=$(($(socket_drops "$SERVER_PORT") - drops0))
	errors=$(($(rcvbuf_errors) - errors0))
	: "${achieved:=0}" "${okcalls:=0}" "${failed:=$calls}" "${retrans:=0}"
	local cpu_us=-
	[ "$okcalls" -gt 0 ] && cpu_us=$(((after - before) * 1000000 / TICKS / okcalls))
	if [ "$failed" -ne 0 ] || [ $((achieved * 100)) -lt $((rate * 95)) ] || [ $((retrans * 100)) -gt "$calls" ]; then
		held=fail
	fi
	kill -0 "$SERVER_PID" 2>/dev/null || held=died
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$gen" "$flows" "$rate" "$held" "$achieved" \
		"$failed" "$retrans" "$p99" "$cpu_us" "$gen_cpu" "$drops" "$errors" >>"$WORK/steps.tsv"
	log "$row $gen $flows rate=$rate → $held (achieved $achieved/s, failed $failed, retrans $retrans, p99 ${p99} ms, server CPU ${cpu_us} µs/call, generator CPU ${gen_cpu} %, dropped: server $drops, all $errors)"
	# Past capacity a server may still be working off a backlog: give it time before the next step.
	if [ "$held" = ok ]; then sleep "$COOLDOWN_S"; else sleep $((COOLDOWN_S * 3)); fi
	echo "$held $achieved $p99 $retrans $cpu_us"
	[ "$held" = ok ]
}

past_deadline() { [ $(($(date +%s) - STARTED_AT)) -ge "$DEADLINE_S" ]; }

# A fresh pbx (same data directory) for the next step, so that it does not inherit the
# transactions still in Timer J from the step before. Runs in this shell: it starts a process.
fresh() {
	if [ "$SERVER_KIND" = pbx ]; then
		stop "$SERVER_PID"
		start_pbx rate
	fi
}

# ramp row generator auth flows sustain(yes|no) → one line of $WORK/results.tsv:
# row, generator, flows, highest search rate that held, first that did not, its step,
# sustained rate, its step, note
ramp() {
	local row=$1 gen=$2 auth=$3 flows=$4 sustain=$5
	local lo=0 hi=0 rate=$START_RATE best="" out note=""
	while [ "$rate" -le "$MAX_RATE" ]; do
		if past_deadline; then
			note="deadline"
			break
		fi
		fresh
		if out=$(step "$row" "$gen" "$auth" "$flows" "$rate"); then
			lo=$rate best=$out
			rate=$((rate * 2))
		else
			hi=$rate
			[[ $out == died* ]] && note="server died"
			break
		fi
	done
	local i=0 mid
	while [ "$hi" -gt 0 ] && [ "$i" -lt "$BISECT_STEPS" ] && [ -z "$note" ]; do
		mid=$(((lo + hi) / 2 / 100 * 100))
		[ "$mid" -le "$lo" ] || [ "$mid" -ge "$hi" ] && break
		past_deadline && note="deadline" && break
		fresh
		if out=$(step "$row" "$gen" "$auth" "$flows" "$mid"); then
			lo=$mid best=$out
		else
			hi=$mid
		fi
		i=$((i + 1))
	done
	[ "$hi" -eq 0 ] && [ "$lo" -ge "$START_RATE" ] && note="${note:-reached MAX_RATE}"
	local sustained=- sbest="- - - - -" try=0 failed_at=""
	rate=$lo
	while [ "$sustain" = yes ] && [ "$rate" -gt 0 ] && [ "$try" -lt "$SUSTAIN_TRIES" ]; do
		past_deadline && note="${note:+$note, }deadline before sustain" && break
		fresh
		if out=$(DURATION_S=$SUSTAIN_S step "$row" "$gen" "$auth" "$flows" "$rate"); then
			sustained=$rate sbest=$out
			break
		fi
		failed_at=$rate
		local achieved_then
		achieved_then=$(echo "$out" | awk '{ print $2 + 0 }')
		rate=$((rate * 3 / 4 < achieved_then * 9 / 10 ? rate * 3 / 4 : achieved_then * 9 / 10))
		rate=$((rate / 100 * 100))
		try=$((try + 1))
	done
	[ -n "$failed_at" ] && [ "$sustained" = - ] && sustained="< $failed_at"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$gen" "$flows" "$lo" "$hi" "${best:-fail - - - -}" \
		"$sustained" "$sbest" "$note" >>"$WORK/results.tsv"
}

# confirm_with_sipp row auth rate: one SIPp step (a new Call-ID per flow) at a rate register_load held
confirm_with_sipp() {
	local row=$1 auth=$2 rate=$3 out
	if [ -z "$rate" ] || [ "$rate" = - ] || [ "$rate" -le 0 ]; then return; fi
	past_deadline && return
	fresh
	if out=$(step "$row" sipp "$auth" new "$rate"); then
		printf '%s\tsipp\tnew\t%s\t0\t%s\t-\t- - - - -\tconfirms register_load\n' "$row" "$rate" "$out" >>"$WORK/results.tsv"
	else
		printf '%s\tsipp\tnew\t-\t%s\t%s\t-\t- - - - -\tdoes not confirm register_load\n' "$row" "$rate" "$out" \
			>>"$WORK/results.tsv"
	fi
}

# rate_for row flows: the sustained rate register_load found, else the search's
rate_for() {
	awk -F'\t' -v r="$1" -v f="$2" '$1 == r && $2 == "register_load" && $3 == f { print ($7 ~ /^[0-9]+$/ ? $7 : $4) }' \
		"$WORK/results.tsv"
}

# The rows most worth having first, in case DEADLINE_S cuts the run short.
rate_rows() {
	: >"$WORK/results.tsv"
	start_kamailio noauth
	ramp "Kamailio, no auth" register_load none refresh yes
	confirm_with_sipp "Kamailio, no auth" none "$(rate_for 'Kamailio, no auth' refresh)"
	stop "$SERVER_PID"

	if [ "$MODE" != kamailio ]; then
		start_pbx rate
		ramp "pbx, digest MD5" register_load md5 refresh yes
		stop "$SERVER_PID"
	fi

	start_kamailio auth
	ramp "Kamailio, digest MD5" register_load md5 refresh yes
	stop "$SERVER_PID"

	[ "$MODE" = kamailio ] && return
	start_pbx rate
	ramp "pbx, digest MD5" register_load md5 new no
	confirm_with_sipp "pbx, digest MD5" md5 "$(rate_for 'pbx, digest MD5' new)"
	ramp "pbx, digest SHA-256" register_load sha256 refresh no
	stop "$SERVER_PID"
}

print_rate_table() {
	echo
	echo "Rates are REGISTER flows per second (a flow with digest is REGISTER → 401 → REGISTER → 200)."
	echo "Search steps last ${STEP_S} s on a fresh server; sustain steps ${SUSTAIN_S} s. The latency, retransmission and"
	echo "CPU columns are those of the sustain step when there is one, else of the best search step."
	echo
	echo "| server | load generator | flows | search: held (${STEP_S} s) | search: failed | sustained (${SUSTAIN_S} s) | p99 latency (ms) | retransmissions | server CPU per flow (µs) | note |"
	echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
	awk -F'\t' '{
		split($6, b, " "); split($8, c, " ")
		if (c[1] == "ok") { b[3] = c[3]; b[4] = c[4]; b[5] = c[5] }
		printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, ($3 == "new" ? "new Call-ID" : "refresh"),
			$4, ($5 == 0 ? "-" : $5), $7, b[3], b[4], b[5], $9
	}' "$WORK/results.tsv"
	echo
	echo "Every step (row, generator, flows, rate, verdict, achieved/s, failed, retransmissions, p99 ms,"
	echo "server CPU µs/flow, load generator CPU % of one core, datagrams dropped on the server's socket,"
	echo "datagrams dropped on any UDP socket of the machine):"
	echo
	echo '```'
	cat "$WORK/steps.tsv"
	echo '```'
}

# ---- memory per registration ----

memory() {
	local out settle=$SETTLE_S
	start_pbx memory
	local idle before during after
	idle=$(rss_kib "$SERVER_PID")
	log "memory: warm-up, $USERS unregistrations (Expires: 0) at $MEM_RATE/s: transactions, digest, nonces, no bindings"
	out=$("$LOAD" --target "127.0.0.1:$PBX_SIP_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/users.csv" \
		--domain "$REALM" --rate "$MEM_RATE" --calls "$USERS" --auth md5 --expires 0 --deadline-s 300) ||
		log "warm-up had failures: $out"
	sleep "$settle"
	before=$(rss_kib "$SERVER_PID")
	log "memory: $USERS registrations (Expires: 3600), each user once"
	out=$("$LOAD" --target "127.0.0.1:$PBX_SIP_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/users.csv" \
		--domain "$REALM" --rate "$MEM_RATE" --calls "$USERS" --auth md5 --expires 3600 --deadline-s 300) || true
	echo "$out" >>"$WORK/register_load.log"
	during=$(rss_kib "$SERVER_PID")
	sleep "$settle"
	after=$(rss_kib "$SERVER_PID")
	local ok
	ok=$(echo "$out" | tr ' ' '\n' | awk -F= '$1 == "ok" { print $2 }')
	stop "$SERVER_PID"
	echo
	echo "| pbx RSS | KiB |"
	echo "| --- | ---: |"
	echo "| idle, $USERS extensions loaded | $idle |"
	echo "| after the warm-up, settled ${settle} s (before) | $before |"
	echo "| right after $ok registrations | $during |"
	echo "| settled ${settle} s (after) | $after |"
	echo
	echo "Bytes per registration: (after − before) × 1024 / $USERS = **$(((after - before) * 1024 / USERS))** (target ≤ 2048);"
	echo "right after the registrations, with their transactions still in Timer J: $(((during - before) * 1024 / USERS))."
	echo
	echo "register_load: $out"
}

# ---- instruction profile ----

profile() {
	# Under callgrind pbx runs some 50 times slower: a low rate, and few users so that most flows
	# are refreshes (the steady state) rather than first registrations.
	local calls=${PROFILE_CALLS:-1000} rate=${PROFILE_RATE:-25} flows=${PROFILE_FLOWS:-per-user} out
	USERS=${PROFILE_USERS:-100}
	make_users
	READY_S=600 start_pbx profile valgrind --tool=callgrind --instr-atstart=no \
		--callgrind-out-file="$WORK/callgrind.out" --separate-threads=no
	log "profile: $calls flows ($flows Call-ID) at $rate/s under callgrind (startup not counted)"
	callgrind_control -i on "$SERVER_PID" >/dev/null
	out=$("$LOAD" --target "127.0.0.1:$PBX_SIP_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/users.csv" \
		--domain "$REALM" --rate "$rate" --calls "$calls" --auth md5 --expires 3600 --call-id "$flows" \
		--deadline-s 600) || true
	echo "register_load under callgrind: $out"
	stop "$SERVER_PID"
	echo
	callgrind_annotate --auto=no --threshold=100 "$WORK/callgrind.out" >"$WORK/callgrind-self.txt" 2>/dev/null || true
	callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$WORK/callgrind.out" >"$WORK/callgrind-inclusive.txt" \
		2>/dev/null || true
	echo "Top functions by own instructions ($calls MD5-authenticated flows, $flows Call-ID; instructions, share):"
	echo '```'
	by_function "$WORK/callgrind-self.txt" | awk 'NR <= 16'
	echo '```'
	echo "pbx functions by inclusive instructions:"
	echo '```'
	by_function "$WORK/callgrind-inclusive.txt" max | grep -E 'pbx_|redb|hmac|ezk_sip_types::header::headers' | awk 'NR <= 25'
	echo '```'
}

# callgrind_annotate lists a function once per source file its code was inlined from: by function,
# sum those (own instructions) or take the largest (inclusive: the line under the function's own file).
by_function() {
	awk -v how="${2:-sum}" '
		/PROGRAM TOTALS/ { total = $1; gsub(",", "", total) }
		/^ *[0-9,]+ +\( *[0-9.]+%\) +[^ ]/ && !/PROGRAM TOTALS/ {
			ir = $1; gsub(",", "", ir); ir += 0
			line = $0
			sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", line)
			sub(/ \[[^]]*\]$/, "", line)
			i = index(line, ":")
			fn = (i > 0) ? substr(line, i + 1) : line
			sub(/\047[0-9]+$/, "", fn)
			if (how == "max") { if (ir > sum[fn]) sum[fn] = ir } else sum[fn] += ir
		}
		END { for (f in sum) printf "%13d  %5.1f%%  %s\n", sum[f], 100 * sum[f] / total, f }
	' "$1" | sort -k1,1nr
}

# ---- main ----

pbx_version() { # the commit, and whether the code pbx is built from differs from it
	local head dirty
	head=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null) || head='?'
	dirty=$(cd "$ROOT" && git status --porcelain -- actors node cluster Cargo.toml Cargo.lock 2>/dev/null) || true
	echo "$head${dirty:+ with uncommitted changes}"
}

ensure_packages
ensure_ports_free
build
STARTED_AT=$(date +%s) # the deadline and the reported duration count from here, after the build
make_users
: >"$WORK/steps.tsv"
echo "# REGISTER load, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "kamailio $(kamailio -v | sed -n 's/^version: kamailio \([^ ]*\).*/\1/p') (children=$KAMAILIO_CHILDREN), $(sipp -v 2>&1 | grep -o 'SIPp v[^ -]*' | head -1), pbx $(pbx_version), STEP_S=$STEP_S, USERS=$USERS"
case $MODE in
all | check)
	memory
	rate_rows
	print_rate_table
	;;
rate | kamailio)
	rate_rows
	print_rate_table
	;;
memory) memory ;;
profile) profile ;;
esac
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); took $(($(date +%s) - STARTED_AT)) s"
