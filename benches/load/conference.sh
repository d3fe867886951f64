#!/usr/bin/env bash
# Conference load on 127.0.0.1: participants in rooms of ROOM_SIZE, every one of them talking
# (a 1 kHz tone, so the mixer always has talkers: the most it ever mixes), held while pbx's CPU,
# memory, mixer overruns and packet counts are read. docs/PERFORMANCE.md ("Conference rooms end
# to end") explains the method and records the numbers.
#
# usage: benches/load/conference.sh [N…]   participant counts to measure (default: 100 300 500 700)
#
# Each participant is a SIPp call (benches/load/call_uac.xml: INVITE → 407 → INVITE → 200 → ACK,
# held, BYE) to a room's number; one SIPp process per room (SIPp's digest uri is per process),
# each with its own RTP port, looping a 1 kHz µ-law tone through rtp_stream at 50 packets/s.
# pbx mixes each room and sends every participant its own 50 packets/s.
#
# A step holds when every participant is in (pbx_conference_participants = N), the mixer
# skipped no tick (pbx_mixer_frame_overruns_total unchanged), no datagram was shed by pbx
# (pbx_conference_packets_shed_total) or dropped by the kernel on pbx's RTP sockets, and what
# pbx received over the window is at least 99 % of 50 packets/s per participant.
#
# Environment (defaults in brackets):
#   PBX [target/release/pbx]   the binary
#   ROOM_SIZE [5]              participants per room
#   MEASURE_S [10]             seconds the counters are read over, every participant up
#   SETUP_RATE [50]            participants per second while a step sets its calls up
#   PORT_BASE [36060]          pbx SIP; +1 pbx HTTP; SIPp from +100 (SIP), +3000 (RTP, 4 ports a room), +6000 (control)
#   RTP_PORTS [20000-29999]    pbx's --rtp-ports
#   LOAD_TMPDIR [/tmp]         where the run's work directory is made
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PBX=${PBX:-$ROOT/target/release/pbx}
ROOM_SIZE=${ROOM_SIZE:-5}
MEASURE_S=${MEASURE_S:-10}
SETUP_RATE=${SETUP_RATE:-50}
PORT_BASE=${PORT_BASE:-36060}
RTP_PORTS=${RTP_PORTS:-20000-29999}
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(100 300 500 700)
WORK=$(mktemp -d "${LOAD_TMPDIR:-/tmp}/pbx-conference.XXXXXX")
SIP_PORT=$PORT_BASE
HTTP_PORT=$((PORT_BASE + 1))
TICKS=$(getconf CLK_TCK)
PBX_PID=
SIPP_PIDS=()

log() { echo "[$(date +%T)] $*" >&2; }

cleanup() {
	for p in "${SIPP_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -z "$PBX_PID" ] || kill "$PBX_PID" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT

command -v sipp >/dev/null || { echo "sipp is not installed" >&2; exit 2; }
[ -x "$PBX" ] || { echo "no pbx binary at $PBX (cargo build --release -p pbx-node)" >&2; exit 2; }

# One second of a 1 kHz tone at −10 dBov in µ-law (G.711 by the book: bias 0x84, clip 32635).
python3 - "$WORK/talk.pcmu" <<'EOF'
import math, sys
def ulaw(x):
    sign = 0x80 if x < 0 else 0
    x = min(abs(x), 32635) + 0x84
    exp = 7
    while exp > 0 and not (x & (0x4000 >> (7 - exp))):
        exp -= 1
    return ~(sign | (exp << 4) | ((x >> (exp + 3)) & 0x0f)) & 0xff
with open(sys.argv[1], "wb") as f:
    f.write(bytes(ulaw(int(10362 * math.sin(2 * math.pi * 1000 * i / 8000))) for i in range(8000)))
EOF
sed 's/silence\.pcmu/talk.pcmu/' "$HERE/call_uac.xml" >"$WORK/call_uac.xml"

metric() { # name: one sample of pbx's /metrics (0 when absent)
	curl -sf --max-time 5 "http://127.0.0.1:$HTTP_PORT/metrics" | awk -v n="$1" '$1 == n { v = $2 } END { print v + 0 }'
}
cpu_ticks() { cut -d')' -f2- "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
# CPU ticks of every SIPp process of this run (the load generator).
sipp_ticks() {
	local p total=0
	for p in $(pgrep -f "sipp 127.0.0.1:$SIP_PORT" || true); do
		total=$((total + $(cpu_ticks "$p" 2>/dev/null || echo 0)))
	done
	echo "$total"
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
rtp_socket_drops() {
	awk -v lo="${RTP_PORTS%-*}" -v hi="${RTP_PORTS#*-}" '
		function hex(h, i, v) { v = 0; for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789ABCDEF", substr(h, i, 1)) - 1; return v }
		NR > 1 { split($2, a, ":"); p = hex(a[2]); if (p >= lo && p <= hi) s += $NF } END { print s + 0 }' /proc/net/udp
}
# Packets pbx received from all participants, per the API (sum of packets_in), and how many
# participants the mixer counted as talking at its last tick.
packets_in() {
	curl -sf --max-time 10 -H "Authorization: Bearer $(cat "$WORK/data/admin.token")" \
		"http://127.0.0.1:$HTTP_PORT/api/v1/conferences" |
		python3 -c 'import json,sys
ps = [p for r in json.load(sys.stdin)["conferences"] for p in r["participants"]]
print(sum(p["packets_in"] for p in ps), sum(p["talking"] for p in ps))'
}

start_pbx() { # rooms
	local rooms=$1 i
	rm -rf "$WORK/data"
	mkdir -p "$WORK/data"
	{
		echo '[registrar]'
		echo 'digest_algorithms = ["MD5"]'
		echo '[[extensions]]'
		echo 'number = "100"'
		echo 'password = "conference-load-100"'
		for i in $(seq 0 $((rooms - 1))); do
			printf '[[conferences]]\nnumber = "%d"\nmax_participants = %d\n' $((9000 + i)) "$ROOM_SIZE"
		done
	} >"$WORK/pbx.toml"
	RUST_LOG=warn "$PBX" appliance --config "$WORK/pbx.toml" --data-dir "$WORK/data" \
		--sip-listen "127.0.0.1:$SIP_PORT" --sip-tls-listen off --http-listen "127.0.0.1:$HTTP_PORT" --rtp-ports "$RTP_PORTS" \
		>"$WORK/pbx.log" 2>&1 &
	PBX_PID=$!
	for _ in $(seq 100); do
		curl -sf --max-time 1 "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	log "pbx did not start: $(tail -5 "$WORK/pbx.log")"
	return 1
}

step() { # n → one line of the table
	local n=$1 rooms=$(((n + ROOM_SIZE - 1) / ROOM_SIZE)) r hold_s
	start_pbx "$rooms"
	# Generous: starting 200 SIPp processes takes longer than the setup rate alone says.
	hold_s=$((2 * n / SETUP_RATE + MEASURE_S + 30))
	SIPP_PIDS=()
	for r in $(seq 0 $((rooms - 1))); do
		local calls=$ROOM_SIZE
		[ $(((r + 1) * ROOM_SIZE)) -le "$n" ] || calls=$((n - r * ROOM_SIZE))
		(cd "$WORK" && exec sipp "127.0.0.1:$SIP_PORT" -sf "$WORK/call_uac.xml" -s $((9000 + r)) -set caller 100 \
			-set media 1 -au 100 -ap conference-load-100 -auth_uri "$((9000 + r))@127.0.0.1:$SIP_PORT" \
			-i 127.0.0.1 -p $((PORT_BASE + 100 + r)) -mp $((PORT_BASE + 3000 + 4 * r)) -cp $((PORT_BASE + 6000 + r)) \
			-m "$calls" -l "$calls" -r "$calls" -d $((hold_s * 1000)) -nostdin -bg \
			-timeout $((hold_s + 60))s -trace_err -error_file "$WORK/sipp-$r.errors" >/dev/null 2>&1) || true
		sleep "$(awk -v c="$calls" -v r="$SETUP_RATE" 'BEGIN { printf "%.3f", c / r }')"
	done
	# sipp -bg forks into the background; find its processes for the cleanup.
	mapfile -t SIPP_PIDS < <(pgrep -f "sipp 127.0.0.1:$SIP_PORT" || true)
	local up=0
	for _ in $(seq 60); do
		up=$(metric pbx_conference_participants)
		[ "${up%.*}" -ge "$n" ] && break
		sleep 0.5
	done
	sleep 2 # every jitter buffer full, every prompt played
	local o0 s0 k0 p0 c0 t0 o1 s1 k1 p1 c1 t1 rss
	o0=$(metric pbx_mixer_frame_overruns_total) s0=$(metric pbx_conference_packets_shed_total)
	local talking g0 g1
	g0=$(sipp_ticks)
	k0=$(rtp_socket_drops) c0=$(cpu_ticks "$PBX_PID") t0=$(date +%s.%N)
	read -r p0 talking < <(packets_in)
	sleep "$MEASURE_S"
	o1=$(metric pbx_mixer_frame_overruns_total) s1=$(metric pbx_conference_packets_shed_total)
	k1=$(rtp_socket_drops) c1=$(cpu_ticks "$PBX_PID") t1=$(date +%s.%N)
	g1=$(sipp_ticks)
	read -r p1 _ < <(packets_in)
	rss=$(rss_kib "$PBX_PID")
	local verdict=ok
	awk -v up="$up" -v n="$n" -v o=$((${o1%.*} - ${o0%.*})) -v s=$((${s1%.*} - ${s0%.*})) -v k=$((k1 - k0)) \
		-v p=$((p1 - p0)) -v a="$t0" -v b="$t1" \
		'BEGIN { exit !(up + 0 >= n && o == 0 && s == 0 && k == 0 && p >= 0.99 * 50 * n * (b - a)) }' || verdict=fail
	for p in "${SIPP_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	kill "$PBX_PID" 2>/dev/null || true
	wait "$PBX_PID" 2>/dev/null || true
	PBX_PID=
	awk -v n="$n" -v rooms="$rooms" -v v="$verdict" -v up="$up" -v talking="$talking" -v o=$((${o1%.*} - ${o0%.*})) -v s=$((${s1%.*} - ${s0%.*})) \
		-v k=$((k1 - k0)) -v p=$((p1 - p0)) -v c=$((c1 - c0)) -v h="$TICKS" -v a="$t0" -v b="$t1" -v rss="$rss" \
		-v g=$((g1 - g0)) 'BEGIN {
		secs = b - a; cpu = 100 * c / h / secs; gen = 100 * g / h / secs
		printf "| %d | %d | %s | %d | %d | %.0f | %.1f %% | %d | %d | %d | %.1f %% | %.3f %% | %d | %.1f | %.0f %% |\n",
			n, rooms, v, up, talking, p / secs, 100 * p / secs / (50 * n), o, s, k, cpu, cpu / n, rss / 1024, rss / n, gen
	}'
	sleep 3
}

log "work directory: $WORK"
echo "| participants | rooms | verdict | in the rooms | talking | RTP in (pkt/s) | of 50/s each | mixer overruns | shed | kernel drops | pbx CPU (% of a core) | CPU per participant | pbx RSS (MiB) | RSS per participant (KiB) | SIPp CPU (% of a core) |"
echo "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for n in "${STEPS[@]}"; do
	step "$n"
done
