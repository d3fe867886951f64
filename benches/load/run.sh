#!/usr/bin/env bash
# Load on 127.0.0.1, pbx beside Kamailio: REGISTER (pbx with digest, Kamailio with and without),
# pbx's memory per registration, an instruction profile of pbx under load; and calls: calls per
# second through pbx's B2BUA and through Kamailio as a stateful proxy, RTP relayed by pbx, and
# pbx's memory per call. docs/PERFORMANCE.md explains the method and records the numbers.
#
# usage: benches/load/run.sh [all|rate|memory|profile|calls-profile|kamailio|check|calls|kamailio-calls|calls-check|calls-media|rtpengine-check|cluster|cluster-check|flood|flood-check]
#   all             memory, then the rate ramps of every REGISTER row (default; < 15 minutes once built)
#   rate            REGISTER rate ramps only
#   memory          pbx's bytes per registration only
#   profile         pbx under callgrind with a short load; prints the top functions
#   calls-profile   pbx under callgrind for PROFILE_CALLS calls (SIPp, 407 digest, no RTP) at
#                   PROFILE_RATE/s; prints instructions per call and the top functions
#   kamailio        the Kamailio REGISTER rows only (needs no pbx)
#   check           one short step per REGISTER row: proves the harness works end to end
#   calls           call rate ramps: Kamailio stateful (no auth, digest), Kamailio + rtpengine
#                   (digest) and pbx (about 16 minutes)
#   kamailio-calls  the Kamailio call rows only, rtpengine's included (needs no pbx)
#   calls-check     one short call step per row, and one short media step
#   calls-media     pbx: memory per call, then concurrent calls with G.711 RTP both ways; then the
#                   same concurrent calls through Kamailio + rtpengine
#   rtpengine-check one short call step and one short media step through Kamailio + rtpengine
#   cluster         pbx on 1 node against 3 (2 voters + a witness) in one run: REGISTER ramps through
#                   the leader and through the follower, then call ramps (about 20 minutes)
#   cluster-check   one short step per cluster row
#   flood           pbx only: the highest rate of unauthenticated INVITEs (a stranger's flood) pbx
#                   absorbs while legitimate calls all succeed; PBX_BEFORE=path measures an older
#                   binary in the same run (about 10 minutes per binary)
#   flood-check     one short flood step per binary
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
#   PORT_BASE [35060]  pbx SIP; +1 pbx HTTP, +10 Kamailio, +20 SIPp (calling phone), +22 SIPp
#                      (called phone), +30 register_load, +40 and +50 SIPp's RTP (and +2 each)
#   KAMAILIO_CHILDREN [4]  UDP worker processes of Kamailio
#   PBX_LOG [warn]     RUST_LOG for pbx
#   LOAD_TMPDIR [/tmp] where the run's work directory (logs, pbx's data directory) is made
# Calls (the calls, kamailio-calls, calls-check and calls-media modes):
#   CALL_STEP_S [10], CALL_SUSTAIN_S [40]   seconds of load per search and per sustain step
#   CALL_START_RATE [100], CALL_MAX_RATE [6400]   calls per second
#   CALL_HOLD_MS [0]   how long each call is held between ACK and BYE (0: pure call rate)
#   KAMAILIO_CALL_ROWS ["noauth auth"]   Kamailio without and with digest (407) on INVITE
#   RTP_PORTS [10000-29999]   pbx's --rtp-ports: 5,000 calls at once (each holds two RTP/RTCP pairs)
#   MEDIA_START [50], MEDIA_MAX [3200]   concurrent media calls: first and last step of the ramp
#   MEDIA_MEASURE_S [10]   seconds the relay counters are read over, every call up
#   MEDIA_SETUP_RATE [200]   calls per second while a media or memory step sets its calls up
#   MEM_CALLS [1000]   concurrent calls of the memory run;  MEM_HOLD_S [30] how long they last
#                      (under pbx's RTP timeout, 60 s, as they carry no media)
#   CALL_DEADLINE_S [1500]  DEADLINE_S of the call modes
#   CALL_SETTLE_S [45] wait (> Timer J and pbx's call-ending bound, 40 s) before reading RSS
#   KAMAILIO_RTPENGINE_ROWS ["auth"]   Kamailio + rtpengine call rows ("" for none): with digest
#   RTPENGINE_MEDIA [1]   calls-media also measures Kamailio + rtpengine (0: pbx only)
#   RTPENGINE_PORTS [40000-59999]   rtpengine's --port-min/--port-max (4 ports per call)
#   MEDIA_IO [pbx's default]   calls.media_io of the call modes' pbx (calls-profile: epoll)
#   PORT_BASE+12, +13  rtpengine's NG control port (UDP) and its HTTP port (/metrics, TCP)
#
# A step "holds" when no call failed, the achieved rate is at least 95 % of the target and
# retransmissions stay at or below 1 % of the calls (a retransmission means a datagram was
# dropped or answered late: the server is past its capacity even if every call succeeded).
# A "call" is one registration flow: REGISTER → 200, or REGISTER → 401 → REGISTER → 200.
#
# Call rows use the same search and sustain (rates rounded to 25 calls/s, from CALL_START_RATE),
# SIPp on both ends: call_uac.xml (INVITE with a PCMU offer → [407 → ACK → INVITE with
# Proxy-Authorization] → 100/180 → 200 → ACK → hold → BYE → 200) and call_uas.xml, the called
# phone, registered first as extension 101 from its own port (register_uas.xml). A step holds
# as above; its failures are those of the phone that counted more, its retransmissions both
# phones', its achieved rate the calls SIPp created per second while creating them. Kamailio
# runs kamailio_calls.cfg (tm stateful, usrloc lookup, record_route, t_relay; -A WITH_AUTH for a
# 407 per INVITE, as pbx does) on the TLSF allocator, and is restarted before every step too.
# pbx is a B2BUA (407 per INVITE, location lookup, two dialogs, SDP rewritten, two RTP port
# pairs leased per call; no RTP flows in these rows). Before a row's ramp one probe call must
# go through: a server that cannot put a call through fails there, saying what it answered.
#
# Kamailio + rtpengine, the peer that anchors media as pbx does: kamailio_calls.cfg with
# -A WITH_RTPENGINE (rtpengine_manage() on the INVITE, on replies with SDP, on ACK and BYE;
# rtpengine_delete() when the INVITE fails) driving Debian's rtpengine-daemon (installed with
# apt like sipp and kamailio; its system service is stopped and disabled, this script starts its
# own): `rtpengine --config-file=none --table=-1` (userspace forwarding, no kernel module),
# --interface=127.0.0.1, --listen-ng on PORT_BASE+12, its own RTPENGINE_PORTS, --num-threads
# left at its default (one per CPU). Both restart before every step. In the call rows rtpengine
# allocates ports and rewrites SDP for every call (no RTP flows); server CPU is Kamailio's
# and rtpengine's. In calls-media the same media steps as pbx's run through Kamailio +
# rtpengine: a step holds when no call failed, rtpengine counted no packet error, the kernel
# dropped nothing on its RTP ports and it relayed ≥ 95 % of 100 × N packets per s; CPU per
# relayed packet is (rtpengine + Kamailio CPU) / rtpengine_packets_total over the window.
#
# calls-media (pbx only): first the memory per call, pbx's RSS with MEM_CALLS calls up (no
# media) against its RSS idle and after a warm-up of as many calls; then steps of N concurrent
# calls (MEDIA_START, doubling up to MEDIA_MAX, then BISECT_STEPS), each phone sending PCMU
# at 50 packets/s (SIPp's rtp_stream), so pbx relays 100 packets/s in and out per call. Once
# every call is up, pbx's /metrics are read MEDIA_MEASURE_S apart. A step holds when no call
# failed, pbx_rtp_dropped_total did not move, the kernel dropped nothing on pbx's RTP sockets,
# what came in went out (in − out ≤ 2 packets per stream: in flight) and in ≥ 95 % of 100 × N
# per s (below that, the generator fell short: see SIPp's CPU).
#
# cluster (pbx only): the REGISTER search and sustain against one `pbx appliance`, then against
# three `pbx node`s (voters n1 and n2, witness w3, certificates from `pbx cluster init`, Raft and
# the actor mesh over QUIC on 127.0.0.1), register_load sending to the voter that leads, then to
# the one that follows (it forwards every write to the leader). The voters start first and elect
# one of them before the witness starts, so the witness (no SIP) never leads. Only n1's config
# declares the extensions, at the cluster's first start (one Raft entry each); later starts
# restore them from each node's redb. Before a refresh row every user registers once with the
# Call-ID, source and user agent of the ramp's flows (register_load --run), so every flow of
# the ramp is a refresh: kept in memory, replicated in one entry per registrar.refresh_flush_s.
# In a "new Call-ID" row every flow is a new binding: on a cluster, committed by a majority
# before the 200 (the registrar's writer puts the bindings waiting at once into one entry).
# Before every step all three nodes stop, get back the data they had before the row's first step
# (an overloaded cluster carries a backlog into the next step) and start again; server CPU is the
# three nodes'. Then the call rows (pbx only): the appliance, and the cluster with both phones
# on one voter.
#   CLUSTER_CALL_VIA [leader]   the voter of the call rows: leader or follower
#   WARM_RATE [1000]            flows per second of the registrations before a refresh row
#   CLUSTER_DEADLINE_S [960]    DEADLINE_S of the REGISTER rows (the cluster's first start writes
#                               USERS extensions through Raft, about a minute); the call rows
#                               then have CALL_DEADLINE_S from their start
#   PORT_BASE+60 …              node i (0 n1, 1 n2, 2 w3): SIP +60+10i, HTTP +61+10i, Raft +62+10i
#                               (its actor mesh +63+10i)
#
# Load generators: register_load (pbx-benches; answers MD5 and SHA-256) ramps every row; SIPp
# (the reference tool) then runs one step at the rate register_load found, to confirm it.
# register_load runs two kinds of flows: "refresh" keeps one Call-ID per user with a rising
# CSeq, as phones do when they renew a registration (RFC 3261 §10.2.4), and "new Call-ID"
# starts every flow with a fresh Call-ID, as SIPp's scenarios do: each is a new binding, which
# pbx writes to its database before answering. Kamailio keeps bindings in memory either way.
#
# flood (pbx only): while SIPp makes FLOOD_CALL_RATE calls per second (call_uac.xml with a
# 407 per INVITE, call_uas.xml answering) for FLOOD_STEP_S, invite_flood (pbx-benches) sends
# unauthenticated INVITEs at the step's rate, each a new transaction, round-robin from
# rate / FLOOD_PER_SOURCE loopback addresses (127.0.1.1 on; each under pbx's default per-source
# limit of 100 new transactions/s, so the row measures the stateless path, not the limiter), and
# counts every datagram that comes back. A step holds when every call succeeded (none failed,
# achieved ≥ 95 %); the rate doubles from FLOOD_START while steps hold, then BISECT_STEPS; a
# step where invite_flood sent under 95 % of its rate ends the ramp (the generator's limit, not
# pbx's). pbx is restarted before every step, and runs with its default [sip] limits. Before the
# ramp, 100 INVITEs at 20/s and 40 s of listening count what one INVITE gets back (Timer G's
# retransmissions included); after it, one step at FLOOD_ONE_RATE from a single address shows
# the per-source limit. PBX_BEFORE (a pbx binary built from an older commit) gets the same
# first, so both rows come from one run.
#   FLOOD_START [1000], FLOOD_MAX [64000]   INVITEs per second
#   FLOOD_STEP_S [40]     seconds of flood (and of calls) per step: longer than Timer H (32 s),
#                         for which a stateful 407 keeps its transaction
#   FLOOD_CALL_RATE [10]  legitimate calls per second during the flood
#   FLOOD_PER_SOURCE [50] INVITEs per second per source address (FLOOD_SOURCES_MIN [10] at least)
#   FLOOD_THREADS [1]     invite_flood's sending threads
#   FLOOD_ONE_RATE [4000] INVITEs per second of the single-source step (0: none)
#   FLOOD_DEADLINE_S [1800]   DEADLINE_S of the flood modes
#   PBX_BEFORE []         an older pbx binary measured in the same run
# PBX_BINARY [] (every mode): measure this pbx binary instead of building this tree's. A binary
# that knows `[sip] source_rate_per_s` gets it set to 0 in every mode but flood: one load
# generator on 127.0.0.1 stands for thousands of phones.
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
RATE_UNIT=100
FAILED_ROWS=()
CALL_STEP_S=${CALL_STEP_S:-10}
CALL_SUSTAIN_S=${CALL_SUSTAIN_S:-40}
CALL_START_RATE=${CALL_START_RATE:-100}
CALL_MAX_RATE=${CALL_MAX_RATE:-6400}
CALL_HOLD_MS=${CALL_HOLD_MS:-0}
KAMAILIO_CALL_ROWS=${KAMAILIO_CALL_ROWS:-noauth auth}
RTP_PORTS=${RTP_PORTS:-10000-29999}
MEDIA_START=${MEDIA_START:-50}
MEDIA_MAX=${MEDIA_MAX:-3200}
MEDIA_MEASURE_S=${MEDIA_MEASURE_S:-10}
MEDIA_SETUP_RATE=${MEDIA_SETUP_RATE:-200}
MEM_CALLS=${MEM_CALLS:-1000}
MEM_HOLD_S=${MEM_HOLD_S:-30}
CALL_SETTLE_S=${CALL_SETTLE_S:-45}
CLUSTER_CALL_VIA=${CLUSTER_CALL_VIA:-leader}
FLOOD_START=${FLOOD_START:-1000}
FLOOD_MAX=${FLOOD_MAX:-64000}
FLOOD_STEP_S=${FLOOD_STEP_S:-40}
FLOOD_CALL_RATE=${FLOOD_CALL_RATE:-10}
FLOOD_PER_SOURCE=${FLOOD_PER_SOURCE:-50}
FLOOD_SOURCES_MIN=${FLOOD_SOURCES_MIN:-10}
FLOOD_THREADS=${FLOOD_THREADS:-1}
FLOOD_ONE_RATE=${FLOOD_ONE_RATE:-4000}
PBX_BEFORE=${PBX_BEFORE:-}
PBX_BINARY=${PBX_BINARY:-}
WARM_RATE=${WARM_RATE:-1000}
KAMAILIO_RTPENGINE_ROWS=${KAMAILIO_RTPENGINE_ROWS-auth}
RTPENGINE_MEDIA=${RTPENGINE_MEDIA:-1}
RTPENGINE_PORTS=${RTPENGINE_PORTS:-40000-59999}

PBX_SIP_PORT=$PORT_BASE
PBX_HTTP_PORT=$((PORT_BASE + 1))
KAM_PORT=$((PORT_BASE + 10))
SIPP_PORT=$((PORT_BASE + 20))
LOAD_PORT=$((PORT_BASE + 30))
UAS_PORT=$((PORT_BASE + 22))
UAC_MEDIA_PORT=$((PORT_BASE + 40))
UAS_MEDIA_PORT=$((PORT_BASE + 50))
RTPE_NG_PORT=$((PORT_BASE + 12))
RTPE_HTTP_PORT=$((PORT_BASE + 13))
REALM=pbx
CALLER=100
CALLEE=101

case $MODE in
all | rate | memory | profile | calls-profile | kamailio | check | calls | kamailio-calls | calls-check | calls-media | rtpengine-check | cluster | cluster-check | flood | flood-check) ;;
*)
	sed -n '7,20p' "$0"
	exit 2
	;;
esac
if [ "$MODE" = check ]; then
	STEP_S=3 SUSTAIN_S=3 SUSTAIN_TRIES=1 START_RATE=200 MAX_RATE=200 BISECT_STEPS=0 SETTLE_S=5
	USERS=${USERS_CHECK:-1000}
fi
[ "$MODE" = cluster ] && DEADLINE_S=${CLUSTER_DEADLINE_S:-960}
if [ "$MODE" = cluster-check ]; then
	STEP_S=3 SUSTAIN_S=3 SUSTAIN_TRIES=1 START_RATE=200 MAX_RATE=200 BISECT_STEPS=0 WARM_RATE=500
	USERS=${USERS_CHECK:-1000}
	CALL_STEP_S=3 CALL_SUSTAIN_S=3 CALL_START_RATE=100 CALL_MAX_RATE=100
fi
# The call rows reuse the REGISTER ramp with call rates; calls are slower, so finer steps.
call_rates() {
	STEP_S=$CALL_STEP_S SUSTAIN_S=$CALL_SUSTAIN_S START_RATE=$CALL_START_RATE MAX_RATE=$CALL_MAX_RATE RATE_UNIT=25
	DEADLINE_S=${CALL_DEADLINE_S:-1500}
}
case $MODE in calls | kamailio-calls | calls-check | calls-media | calls-profile | rtpengine-check) call_rates ;; esac
if [ "$MODE" = calls-check ] || [ "$MODE" = rtpengine-check ]; then
	STEP_S=3 SUSTAIN_S=3 SUSTAIN_TRIES=1 START_RATE=100 MAX_RATE=100 BISECT_STEPS=0
	MEDIA_START=${MEDIA_START_CHECK:-20} MEDIA_MAX=${MEDIA_START_CHECK:-20} MEDIA_MEASURE_S=3
	MEM_CALLS=${MEM_CALLS_CHECK:-100} MEM_HOLD_S=10 CALL_SETTLE_S=5
fi
if [ "$MODE" = flood-check ]; then
	FLOOD_STEP_S=5 FLOOD_START=1000 FLOOD_MAX=1000 BISECT_STEPS=0 FLOOD_ONE_RATE=1000
fi
case $MODE in flood | flood-check) DEADLINE_S=${FLOOD_DEADLINE_S:-1800} ;; esac

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d "${LOAD_TMPDIR:-/tmp}/pbx-load.XXXXXX")
TICKS=$(getconf CLK_TCK)
STARTED_AT=$(date +%s)
PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
	local pid
	# Phones still running (timeout, the parent of each SIPp; it passes TERM on).
	for pid in $(cat "$WORK/phones.pids" 2>/dev/null); do
		[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = timeout ] && PIDS+=("$pid")
	done
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
	if [ "$MODE" = profile ] || [ "$MODE" = calls-profile ]; then command -v valgrind >/dev/null || missing+=(valgrind); fi
	command -v curl >/dev/null || missing+=(curl)
	local rtpengine=no
	case $MODE in calls | kamailio-calls | calls-check | calls-media | rtpengine-check)
		command -v rtpengine >/dev/null || { missing+=(rtpengine-daemon) && rtpengine=yes; } ;;
	esac
	[ ${#missing[@]} -eq 0 ] && return
	for pkg in "${missing[@]}"; do
		if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
			apt-get update
			break
		fi
	done
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
	[ "$rtpengine" = no ] || rtpengine_service_off
}

# The package starts rtpengine as a system service (kernel forwarding, its own config): this
# script runs its own, so the service is stopped and kept from starting at boot.
rtpengine_service_off() {
	local unit
	for unit in rtpengine-daemon rtpengine-recording-daemon; do
		if command -v systemctl >/dev/null && systemctl disable --now "$unit" >/dev/null 2>&1; then continue; fi
		service "$unit" stop >/dev/null 2>&1 || true
		update-rc.d "$unit" disable >/dev/null 2>&1 || true
	done
}

ensure_ports_free() {
	local port
	for port in "$PBX_SIP_PORT" "$KAM_PORT" "$SIPP_PORT" "$UAS_PORT" "$LOAD_PORT" "$UAC_MEDIA_PORT" \
		$((UAC_MEDIA_PORT + 2)) "$UAS_MEDIA_PORT" $((UAS_MEDIA_PORT + 2)) "$RTPE_NG_PORT"; do
		if ss -Hlun "sport = :$port" 2>/dev/null | grep -q .; then
			log "UDP port $port is in use; set PORT_BASE to another value"
			exit 1
		fi
	done
	for port in "$PBX_HTTP_PORT" "$RTPE_HTTP_PORT"; do
		if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
			log "TCP port $port is in use; set PORT_BASE to another value"
			exit 1
		fi
	done
	case $MODE in cluster | cluster-check) ;; *) return 0 ;; esac
	for i in 0 1 2; do
		if ss -Hlun "sport >= :$(node_port "$i" 0) and sport <= :$(node_port "$i" 3)" 2>/dev/null | grep -q . ||
			ss -Hltn "sport = :$(node_port "$i" 1)" 2>/dev/null | grep -q .; then
			log "a port of cluster node ${NODES[$i]} ($(node_port "$i" 0)-$(node_port "$i" 3)) is in use; set PORT_BASE to another value"
			exit 1
		fi
	done
}

build() {
	local bins=() pbx=(-p pbx-node --bin pbx)
	# PBX_BINARY: a pbx built elsewhere (an older commit, say) is measured instead of this tree's.
	[ -z "$PBX_BINARY" ] || pbx=()
	case $MODE in
	kamailio-calls | rtpengine-check) ;;
	calls | calls-check | calls-media | calls-profile) bins+=(${pbx[@]+"${pbx[@]}"}) ;;
	flood | flood-check) bins+=(-p pbx-benches --bin invite_flood ${pbx[@]+"${pbx[@]}"}) ;;
	kamailio) bins+=(-p pbx-benches --bin register_load) ;;
	*) bins+=(-p pbx-benches --bin register_load ${pbx[@]+"${pbx[@]}"}) ;;
	esac
	local target=${CARGO_TARGET_DIR:-$ROOT/target}
	LOAD=$target/release/register_load
	FLOOD=$target/release/invite_flood
	PBX=${PBX_BINARY:-$target/release/pbx}
	if [ -n "$PBX_BINARY" ] && [ ! -x "$PBX_BINARY" ]; then
		log "PBX_BINARY=$PBX_BINARY is not an executable"
		exit 1
	fi
	[ ${#bins[@]} -gt 0 ] || return 0
	log "cargo build --release ${bins[*]}"
	(cd "$ROOT" && cargo build --release "${bins[@]}")
}

make_users() { # SIPp injection file: user;password;[authentication …] (SIPp cannot nest [field0] in it)
	{
		echo SEQUENTIAL
		seq 10000 $((10000 + USERS - 1)) | awk '{ printf "u%s;pw-u%s;[authentication username=u%s password=pw-u%s]\n", $1, $1, $1, $1 }'
	} >"$WORK/users.csv"
	head -2 "$WORK/users.csv" >"$WORK/one-user.csv"
	{
		echo SEQUENTIAL
		tail -1 "$WORK/users.csv"
	} >"$WORK/last-user.csv"
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

registrar_config() { # the [registrar] table of every pbx this script starts (and [sip], see below)
	echo '[registrar]'
	echo "realm = \"$REALM\""
	# MD5 first: SIPp 3.6 answers only the first challenge of a 401, and only MD5.
	echo 'digest_algorithms = ["MD5", "SHA-256"]'
	# One source sends everything: a stray failure must not block it for the next steps. Since
	# issue 14 failures count per (source, user) and per user, and the limits go up to 100.
	if knows_setting user_auth_failures_max; then
		printf 'auth_failures_max = 100\nuser_auth_failures_max = 100\n'
	else
		echo 'auth_failures_max = 1000000'
	fi
	# One load generator (127.0.0.1) stands for thousands of phones: pbx's per-source limit on
	# new transactions (100/s by default) would measure the limiter, not pbx. The flood modes
	# keep the default: there the limit is part of what is measured. An older pbx without the
	# setting (before issue 14) refuses an unknown [sip] table, so it gets none.
	if knows_setting source_rate_per_s; then
		case $MODE in
		flood | flood-check) ;;
		*) printf '\n[sip]\nsource_rate_per_s = 0\n' ;;
		esac
	fi
	return 0
}

# knows_setting name: whether the pbx binary about to run has this config setting (its name is
# in the binary's config parser); older binaries refuse settings they do not know.
knows_setting() { grep -qaF "$1" "$PBX"; }

user_extensions() { # every user of users.csv as an extension
	tail -n +2 "$WORK/users.csv" | awk -F';' '{ printf "\n[[extensions]]\nnumber = \"%s\"\npassword = \"%s\"\n", $1, $2 }'
}

call_extensions() { # the calling and the called phone
	for ext in "$CALLER" "$CALLEE"; do printf '\n[[extensions]]\nnumber = "%s"\npassword = "call-pw-%s"\n' "$ext" "$ext"; done
}

write_pbx_config() { # file: every user of users.csv as an extension
	{
		registrar_config
		user_extensions
	} >"$1"
}

start_pbx() { # name [wrapper…] → sets SERVER_PID
	local name=$1
	shift
	local dir=$WORK/pbx-$name
	mkdir -p "$dir/data"
	write_pbx_config "$dir/pbx.toml"
	RUST_LOG=$PBX_LOG "$@" "$PBX" appliance --data-dir "$dir/data" --config "$dir/pbx.toml" \
		--sip-listen "127.0.0.1:$PBX_SIP_PORT" --sip-tls-listen off --http-listen "127.0.0.1:$PBX_HTTP_PORT" >"$dir/pbx.log" 2>&1 &
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

wait_ready() { # auth|noauth [seconds [users file]]: one unregistration (Expires: 0) answered 200
	local auth=none deadline=$(($(date +%s) + ${2:-30}))
	[ "$1" = auth ] && auth=md5
	while [ "$(date +%s)" -lt "$deadline" ]; do
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		if "$LOAD" --target "127.0.0.1:$SERVER_PORT" --local "127.0.0.1:$LOAD_PORT" --users "${3:-$WORK/one-user.csv}" \
			--domain "$REALM" --rate 1 --calls 1 --auth "$auth" --expires 0 --deadline-s 5 >/dev/null 2>&1; then
			return 0
		fi
		sleep 1
	done
	return 1
}

cpu_ticks() { # pid…: user+system ticks of the processes (all threads) and their child processes
	local total=0 p f q
	for p in "$@" $(for q in "$@"; do pgrep -P "$q"; done || true); do
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

# The server's CPU: a cluster's is that of its three nodes.
server_cpu() {
	case $SERVER_KIND in
	cluster) cpu_ticks "${NODE_PIDS[@]}" ;;
	kamailio-rtpengine) cpu_ticks "$SERVER_PID" "$RTPE_PID" ;;
	*) cpu_ticks "$SERVER_PID" ;;
	esac
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# ---- one step, one ramp ----

# cseq_base flows: the first CSeq of a register_load run of REFRESH_RUN's Call-IDs, above every
# CSeq of the runs before it (a run of n flows uses base … base + 2n - 1). In a file: steps run
# in subshells.
cseq_base() {
	local base
	base=$(cat "$WORK/cseq" 2>/dev/null || echo 1)
	echo $((base + 2 * $1)) >"$WORK/cseq"
	echo "$base"
}

# step row generator auth flows rate → prints "ok|fail achieved p99 retrans cpu_us_per_call"; 0 if it held.
# flows: refresh (one Call-ID per user) or new (a new Call-ID per flow; SIPp always does this).
step() {
	local row=$1 gen=$2 auth=$3 flows=$4 rate=$5
	[ "$gen" = sipp-calls ] && {
		call_step "$row" "$rate"
		return
	}
	local duration=${DURATION_S:-$STEP_S}
	local calls=$((rate * duration)) inflight=$((rate > 200 ? rate : 200))
	local before after line achieved failed retrans p99 okcalls held=ok gen_cpu=-
	local drops0 errors0 drops errors
	drops0=$(socket_drops "$SERVER_PORT")
	errors0=$(rcvbuf_errors)
	before=$(server_cpu)
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
		local same=()
		[ "$flows" = refresh ] && [ -n "${REFRESH_RUN:-}" ] && same=(--run "$REFRESH_RUN" --cseq-base "$(cseq_base "$calls")")
		line=$("$LOAD" --target "127.0.0.1:$SERVER_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/users.csv" \
			--domain "$REALM" --rate "$rate" --calls "$calls" --auth "$auth" --expires 3600 \
			--call-id "$([ "$flows" = refresh ] && echo per-user || echo per-call)" --max-inflight "$inflight" \
			--deadline-s $((duration * 3 + 30)) ${same[@]+"${same[@]}"} 2>&1) || true
		echo "$line" >>"$WORK/register_load.log"
		kv() { echo "$line" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
		achieved=$(kv achieved_rate | awk '{ printf "%.0f", $1 }')
		okcalls=$(kv ok)
		failed=$(kv failed)
		retrans=$(kv retransmissions)
		p99=$(kv latency_ms_p99)
		gen_cpu=$(awk -v c="$(kv cpu_s)" -v e="$(kv elapsed_s)" 'BEGIN { if (e > 0) printf "%.0f", 100 * c / e; else print "-" }')
	fi
	after=$(server_cpu)
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

# PHASE_AT: where the deadline counts from when a run has two phases (cluster: REGISTER, calls).
past_deadline() { [ $(($(date +%s) - ${PHASE_AT:-$STARTED_AT})) -ge "$DEADLINE_S" ]; }

# A fresh pbx (same data directory) for the next step, so that it does not inherit the
# transactions still in Timer J from the step before. Runs in this shell: it starts a process.
fresh() {
	case $SERVER_KIND in
	pbx)
		stop "$SERVER_PID"
		start_pbx rate
		;;
	pbx-calls)
		stop "$SERVER_PID"
		start_pbx_calls rate || exit 1
		;;
	kamailio-calls)
		stop "$SERVER_PID"
		start_kamailio_calls "$KAMAILIO_AUTH"
		;;
	kamailio-rtpengine)
		stop_kamailio_rtpengine
		start_kamailio_rtpengine "$KAMAILIO_AUTH"
		;;
	cluster)
		stop_cluster
		rm -rf "$WORK/cluster-$CLUSTER_KIND"
		cp -a "$WORK/cluster-$CLUSTER_KIND.kept" "$WORK/cluster-$CLUSTER_KIND"
		start_cluster "$CLUSTER_KIND" "$CLUSTER_VIA"
		;;
	esac
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
		mid=$(((lo + hi) / 2 / RATE_UNIT * RATE_UNIT))
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
		# A call step past capacity collapses (SIPp's -l caps the calls in progress), so what it
		# achieved says little about capacity: back off from the rate tried.
		[ "$gen" = sipp-calls ] && achieved_then=$rate
		rate=$((rate * 3 / 4 < achieved_then * 9 / 10 ? rate * 3 / 4 : achieved_then * 9 / 10))
		rate=$((rate / RATE_UNIT * RATE_UNIT))
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
	# The issue's workload is refresh flows: every user registers once before counting starts, so
	# the first registrations' Raft commits (a few per batch, varying with the machine's speed)
	# do not swing the count; refreshes that move only the expiry are written every
	# refresh_flush_s, and those flushes are counted.
	log "profile: $USERS first registrations (not counted)"
	"$LOAD" --target "127.0.0.1:$PBX_SIP_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/users.csv" \
		--domain "$REALM" --rate "$rate" --calls "$USERS" --auth md5 --expires 3600 --call-id "$flows" \
		--run 1 --deadline-s 600 >/dev/null || true
	log "profile: $calls flows ($flows Call-ID) at $rate/s under callgrind (startup not counted)"
	callgrind_control -i on "$SERVER_PID" >/dev/null
	out=$("$LOAD" --target "127.0.0.1:$PBX_SIP_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/users.csv" \
		--domain "$REALM" --rate "$rate" --calls "$calls" --auth md5 --expires 3600 --call-id "$flows" \
		--run 1 --cseq-base 1000 --deadline-s 600) || true
	echo "register_load under callgrind: $out"
	stop "$SERVER_PID"
	echo
	annotate_callgrind
	echo "Top functions by own instructions ($calls MD5-authenticated flows, $flows Call-ID; instructions, share):"
	echo '```'
	by_function "$WORK/callgrind-self.txt" | awk 'NR <= 16'
	echo '```'
	echo "pbx functions by inclusive instructions:"
	echo '```'
	by_function "$WORK/callgrind-inclusive.txt" max | grep -E 'pbx_|redb|hmac|ezk_sip_types::header::headers' | awk 'NR <= 25'
	echo '```'
}

calls_profile() {
	# Under callgrind pbx runs some 50 times slower: a low rate. One probe call first, with
	# instrumentation off, so start-up and the first call's lazy set-up are not counted.
	local calls=${PROFILE_CALLS:-1000} rate=${PROFILE_RATE:-20} total
	# valgrind does not follow io_uring (the calls never reach the called phone under it): the
	# media workers run on epoll here, which the call path itself does not notice.
	MEDIA_IO=epoll READY_S=600 start_pbx_calls profile valgrind --tool=callgrind --instr-atstart=no \
		--callgrind-out-file="$WORK/callgrind.out" --separate-threads=no || exit 1
	probe_call "pbx under callgrind" || exit 1
	log "calls-profile: $calls calls at $rate/s under callgrind (start-up and the probe call not counted)"
	callgrind_control -i on "$SERVER_PID" >/dev/null
	CALLS=$calls RATE=$rate HOLD_MS=0 LIMIT=$((rate * 4 + 100)) SECONDS_MAX=$((calls / rate * 3 + 120)) ON_UP='' \
		run_calls profile "" ""
	# Let the last calls' CDRs commit and their transactions end (Timer J is not waited for).
	sleep 5
	stop "$SERVER_PID"
	echo "calls under callgrind: $((calls - RUN_FAILED)) of $calls went through, $RUN_RETRANS retransmissions"
	annotate_callgrind
	total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' "$WORK/callgrind-self.txt")
	echo "Instructions per call: **$((total / calls))** (program total $total / $calls calls)"
	echo "Top functions by own instructions:"
	echo '```'
	by_function "$WORK/callgrind-self.txt" | awk 'NR <= 25'
	echo '```'
	echo "pbx functions by inclusive instructions:"
	echo '```'
	by_function "$WORK/callgrind-inclusive.txt" max | grep -E 'pbx_|redb|openraft|ezk_sip_types' | awk 'NR <= 40'
	echo '```'
}

# $WORK/callgrind.out → callgrind-self.txt (own instructions) and callgrind-inclusive.txt.
annotate_callgrind() {
	callgrind_annotate --auto=no --threshold=100 "$WORK/callgrind.out" >"$WORK/callgrind-self.txt" 2>/dev/null || true
	callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$WORK/callgrind.out" >"$WORK/callgrind-inclusive.txt" \
		2>/dev/null || true
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

# ---- calls ----

# SIPp on one end of a call: runs in $WORK (rtp_stream reads silence.pcmu from the current
# folder), bounded by `timeout`, its CPU time in $WORK/<name>.time; every other argument is SIPp's.
sipp_phone() { # name seconds sipp-args… (in the background: sets PHONE_PID)
	local name=$1 seconds=$2
	shift 2
	(cd "$WORK" && exec timeout "$seconds" /usr/bin/time -f '%U %S %e' -o "$WORK/$name.time" sipp "$@" -i 127.0.0.1 \
		-mi 127.0.0.1 -nostdin -buff_size 1048576 -trace_stat -stf "$WORK/$name.csv" -fd 1 -trace_err \
		-error_file "$WORK/$name.errors" >"$WORK/$name.out" 2>&1) &
	PHONE_PID=$!
	PIDS+=("$PHONE_PID")
	# Phones start in subshells ($(…)), whose PIDS the exit trap does not see: it reads this file.
	echo "$PHONE_PID" >>"$WORK/phones.pids"
}

# register_callee [seconds]: extension 101 registered at the called phone's ip:port (SIPp,
# one REGISTER, answering a 401 if one comes), retried until the server answers.
register_callee() {
	local deadline=$(($(date +%s) + ${1:-30})) n=0
	while [ "$(date +%s)" -lt "$deadline" ]; do
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		n=$((n + 1))
		if (cd "$WORK" && timeout 15 sipp "127.0.0.1:$SERVER_PORT" -sf "$HERE/register_uas.xml" -set user "$CALLEE" \
			-set domain "$REALM" -au "$CALLEE" -ap "call-pw-$CALLEE" -i 127.0.0.1 -p "$UAS_PORT" -m 1 -nostdin \
			-timeout 5s -timeout_error -trace_err -error_file "$WORK/register-callee.errors" \
			>"$WORK/register-callee.out" 2>&1); then
			return 0
		fi
		sleep 1
	done
	return 1
}

# Restarted before every step, as pbx is: a step past capacity leaves thousands of transactions
# behind (tm keeps an unanswered INVITE for fr_inv_timer, 120 s). 1 GiB of shared memory: 256 MiB
# runs out at ~3,000 calls/s once retransmissions pile up. The TLSF allocator (-x, -X): with
# Kamailio's default (qm) qm_malloc took two thirds of its CPU here (perf), ~850 µs per call
# instead of ~310.
start_kamailio_calls() { # auth|noauth [more kamailio args] → sets SERVER_PID
	local define=()
	[ "$1" = auth ] && define=(-A WITH_AUTH)
	define+=("${@:2}")
	mkdir -p "$WORK/kamailio-calls-$1"
	kamailio -f "$HERE/kamailio_calls.cfg" -l "udp:127.0.0.1:$KAM_PORT" -n "$KAMAILIO_CHILDREN" -m 1024 -M 16 -x tlsf -X tlsf \
		-DD -E -Y "$WORK/kamailio-calls-$1" -P "$WORK/kamailio-calls-$1/kamailio.pid" "${define[@]}" \
		>>"$WORK/kamailio-calls-$1.log" 2>&1 &
	SERVER_PID=$!
	PIDS+=("$SERVER_PID")
	SERVER_PORT=$KAM_PORT
	SERVER_KIND=kamailio-calls KAMAILIO_AUTH=$1
	register_callee 30 && sleep 0.5 && kill -0 "$SERVER_PID" 2>/dev/null || {
		log "Kamailio did not answer the called phone's REGISTER (or another process has UDP port $KAM_PORT);" \
			"see $WORK/kamailio-calls-$1.log, $WORK/register-callee.out"
		exit 1
	}
}

start_pbx_calls() { # name [wrapper…] → sets SERVER_PID; 1 (with a message) if pbx did not register the called phone
	local dir=$WORK/pbx-calls-$1
	shift
	mkdir -p "$dir/data"
	{
		registrar_config
		[ -n "${MEDIA_IO:-}" ] && printf '\n[calls]\nmedia_io = "%s"\n' "$MEDIA_IO"
		call_extensions
	} >"$dir/pbx.toml"
	RUST_LOG=$PBX_LOG "$@" "$PBX" appliance --data-dir "$dir/data" --config "$dir/pbx.toml" --sip-listen "127.0.0.1:$PBX_SIP_PORT" --sip-tls-listen off \
		--http-listen "127.0.0.1:$PBX_HTTP_PORT" --rtp-ports "$RTP_PORTS" >>"$dir/pbx.log" 2>&1 &
	SERVER_PID=$!
	PIDS+=("$SERVER_PID")
	SERVER_PORT=$PBX_SIP_PORT
	SERVER_KIND=pbx-calls
	register_callee "${READY_S:-60}" || {
		log "pbx did not register extension $CALLEE (REGISTER → 401 → REGISTER → 200); see $dir/pbx.log, $WORK/register-callee.out"
		tail -5 "$dir/pbx.log" >&2
		return 1
	}
	# Whoever answered must be this pbx: another server that took the port meanwhile (another run
	# of this script, say) would answer the REGISTER while this pbx exits on its failed bind.
	sleep 0.5
	if ! ss -Hlunp "sport = :$PBX_SIP_PORT" 2>/dev/null | grep -q "pid=$SERVER_PID,"; then
		log "pbx is not the one on UDP port $PBX_SIP_PORT (taken by another process?); see $dir/pbx.log"
		tail -3 "$dir/pbx.log" >&2
		return 1
	fi
}

metric() { # name [label]: one sample of pbx's /metrics (0 when absent, "x" when /metrics did not answer)
	local page
	page=$(curl -sf --max-time 5 "http://127.0.0.1:$PBX_HTTP_PORT/metrics" 2>/dev/null) || {
		echo x
		return
	}
	echo "$page" | awk -v n="$1" -v l="${2:-}" '$1 == n || (l != "" && $1 == n "{" l "}") { v = $2 } END { print v + 0 }'
}

# Kernel drops on pbx's RTP sockets (the drops column of /proc/net/udp over the --rtp-ports range).
rtp_socket_drops() {
	awk -v lo="${RTP_PORTS%-*}" -v hi="${RTP_PORTS#*-}" '
		function hex(h, i, v) { v = 0; for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789ABCDEF", substr(h, i, 1)) - 1; return v }
		NR > 1 { split($2, a, ":"); p = hex(a[2]); if (p >= lo && p <= hi) s += $NF } END { print s + 0 }' /proc/net/udp
}

# stat_field csv n: field n of the last line of a SIPp -trace_stat file (0 when there is none)
stat_field() { tail -1 "$1" 2>/dev/null | awk -F';' -v n="$2" '{ v = $n } END { print v + 0 }'; }

# The CPU SIPp used, in % of one core over its run.
phone_cpu() { tail -1 "$WORK/$1.time" 2>/dev/null | awk '{ if ($3 > 0) printf "%.0f", 100 * ($1 + $2) / $3; else print "-" } END { if (NR == 0) print "-" }'; }

# wait_phone pid seconds: let one phone end by itself, then stop it (SIPp's UAS ends after -m calls)
wait_phone() {
	local pid=$1
	for _ in $(seq $(($2 * 10))); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	stop "$pid"
}

# run_calls name uas-extra-args uac-extra-args: run the called phone and the calling phone for
# CALLS calls at RATE per second, each held HOLD_MS. Set by the caller: CALLS, RATE, HOLD_MS,
# LIMIT, SECONDS_MAX, and ON_UP (a command run once the calling phone has started). Sets
# RUN_FAILED RUN_RETRANS RUN_ACHIEVED RUN_SETUP_MS, and LAST_UAC LAST_UAS, the names of the
# phones' files in $WORK (numbered in the order of the run: steps run in subshells, hence a file).
run_calls() {
	local name=$1 uas_args=$2 uac_args=$3 n
	n=$(($(cat "$WORK/run.no" 2>/dev/null || echo 0) + 1))
	echo "$n" >"$WORK/run.no"
	local uac=$n-$name-uac uas=$n-$name-uas uas_pid uac_pid
	# shellcheck disable=SC2086 # word splitting of the extra arguments is wanted
	sipp_phone "$uas" "$SECONDS_MAX" -sf "$HERE/call_uas.xml" -p "$UAS_PORT" -mp "$UAS_MEDIA_PORT" -m "$CALLS" \
		-recv_timeout $((HOLD_MS + 30000)) $uas_args
	uas_pid=$PHONE_PID
	for _ in $(seq 50); do
		ss -Hlun "sport = :$UAS_PORT" 2>/dev/null | grep -q . && break
		sleep 0.1
	done
	# -auth_uri: the digest uri is the Request-URI (SIPp prefixes "sip:"; its default is host:port).
	# shellcheck disable=SC2086
	sipp_phone "$uac" "$SECONDS_MAX" "127.0.0.1:$SERVER_PORT" -sf "$HERE/call_uac.xml" -s "$CALLEE" -set caller "$CALLER" \
		-au "$CALLER" -ap "call-pw-$CALLER" -auth_uri "$CALLEE@127.0.0.1:$SERVER_PORT" -p "$SIPP_PORT" \
		-mp "$UAC_MEDIA_PORT" -r "$RATE" -rp 1000 -m "$CALLS" -l "$LIMIT" -d "$HOLD_MS" \
		-recv_timeout $((HOLD_MS + 30000)) -timeout $((SECONDS_MAX - 10))s -timeout_error $uac_args
	uac_pid=$PHONE_PID
	[ -z "${ON_UP:-}" ] || $ON_UP
	wait_phone "$uac_pid" "$SECONDS_MAX"
	# The UAS ends by itself after its last call's BYE.
	wait_phone "$uas_pid" 10
	LAST_UAC=$uac LAST_UAS=$uas
	local failed_uac failed_uas
	# Fields of SIPp's -trace_stat file: 1 StartTime and 3 CurrentTime (date, time, epoch; tab
	# separated), 13 TotalCallCreated, 16 SuccessfulCall(C), 18 FailedCall(C), 58 Retransmissions(C),
	# 70 ResponseTime1(C) (INVITE to 200, 407 round included; hh:mm:ss:µs).
	# Failed: calls of the calling phone that did not succeed (failed or never finished), or calls
	# the called phone failed (an unexpected message, a timeout), whichever is more.
	failed_uac=$((CALLS - $(stat_field "$WORK/$uac.csv" 16)))
	failed_uas=$(stat_field "$WORK/$uas.csv" 18)
	RUN_FAILED=$((failed_uac > failed_uas ? failed_uac : failed_uas))
	RUN_RETRANS=$(($(stat_field "$WORK/$uac.csv" 58) + $(stat_field "$WORK/$uas.csv" 58)))
	# Achieved: calls created per second while SIPp was still creating them (its last periodic
	# line before the last call; SIPp's own average runs until the slowest call has ended).
	RUN_ACHIEVED=$(awk -F';' -v n="$CALLS" 'NR > 1 {
		split($1, a, "\t"); split($3, b, "\t"); t = b[3] - a[3]; c = $13 + 0
		if (t > 0 && c > 0 && (c < n || r == "")) r = c / t
	} END { printf "%.0f", r + 0 }' "$WORK/$uac.csv" 2>/dev/null || echo 0)
	RUN_SETUP_MS=$(tail -1 "$WORK/$uac.csv" 2>/dev/null |
		awk -F';' '{ split($70, t, ":"); printf "%.0f", (t[1] * 3600 + t[2] * 60 + t[3]) * 1000 + t[4] / 1000 }')
	: "${RUN_SETUP_MS:=-}"
}

# A call that works end to end, before a row's ramp: a server that cannot put a call through
# fails here in seconds, with what it answered, rather than at every step of the ramp.
probe_call() { # row → 0 if one call went through
	local row=$1
	rm -f "$WORK/probe-messages.log"
	CALLS=1 RATE=1 HOLD_MS=0 LIMIT=1 SECONDS_MAX=40 ON_UP='' run_calls probe "" "-trace_msg -message_file $WORK/probe-messages.log"
	[ "$RUN_FAILED" -eq 0 ] && return 0
	log "$row: the probe call did not go through (INVITE → [407 → INVITE] → 200 → ACK → BYE → 200)."
	local got
	got=$(grep -h '^SIP/2.0' "$WORK/probe-messages.log" 2>/dev/null | sort | uniq -c | tr -s ' ' | paste -sd',') || true
	log "  responses the calling phone got:${got:- none}"
	log "  see $WORK/$LAST_UAC.errors, $WORK/probe-messages.log and the server's log"
	return 1
}

# call_step row rate → prints "ok|fail achieved setup_ms retrans cpu_us"; 0 if it held.
# The step's CALLS = rate × duration calls, held CALL_HOLD_MS each.
call_step() {
	local row=$1 rate=$2 duration=${DURATION_S:-$STEP_S}
	local calls=$((rate * duration)) before after held=ok drops0 errors0 drops errors
	local hold_s=$(((CALL_HOLD_MS + 999) / 1000))
	drops0=$(socket_drops "$SERVER_PORT")
	errors0=$(rcvbuf_errors)
	before=$(server_cpu)
	CALLS=$calls RATE=$rate HOLD_MS=$CALL_HOLD_MS LIMIT=$((rate * (2 + hold_s) + 100)) \
		SECONDS_MAX=$((duration * 3 + hold_s + 60)) ON_UP='' run_calls "$(echo "${row%%,*}" | tr ' ' '-')-$rate" "" ""
	after=$(server_cpu)
	local failed=$RUN_FAILED retrans=$RUN_RETRANS achieved=$RUN_ACHIEVED setup_ms=$RUN_SETUP_MS
	drops=$(($(socket_drops "$SERVER_PORT") - drops0))
	errors=$(($(rcvbuf_errors) - errors0))
	local okcalls=$((calls - failed)) cpu_us=-
	[ "$okcalls" -gt 0 ] && cpu_us=$(((after - before) * 1000000 / TICKS / okcalls))
	if [ "$failed" -ne 0 ] || [ $((achieved * 100)) -lt $((rate * 95)) ] || [ $((retrans * 100)) -gt "$calls" ]; then
		held=fail
	fi
	kill -0 "$SERVER_PID" 2>/dev/null || held=died
	local gen_cpu
	gen_cpu="$(phone_cpu "$LAST_UAC")+$(phone_cpu "$LAST_UAS")"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" sipp "hold $CALL_HOLD_MS ms" "$rate" "$held" "$achieved" \
		"$failed" "$retrans" "$setup_ms" "$cpu_us" "$gen_cpu" "$drops" "$errors" >>"$WORK/steps.tsv"
	log "$row rate=$rate calls/s → $held (achieved $achieved/s, failed $failed, retrans $retrans, setup ${setup_ms} ms," \
		"server CPU ${cpu_us} µs/call, SIPp CPU $gen_cpu %, dropped: server $drops, all $errors)"
	if [ "$held" = ok ]; then sleep "$COOLDOWN_S"; else sleep $((COOLDOWN_S * 3)); fi
	echo "$held $achieved $setup_ms $retrans $cpu_us"
	[ "$held" = ok ]
}

# call_row row [started]: the call ramp of the server just started (started: 0 if it did, as
# start_pbx_calls returns), after one probe call; a row without a call that went through is failed.
call_row() {
	local row=$1
	if [ "${2:-0}" -eq 0 ] && probe_call "$row"; then
		ramp "$row" sipp-calls - calls yes
	else
		printf '%s\tsipp\tcalls\t0\t-\tfail - - - -\t-\t- - - - -\tno call went through\n' "$row" >>"$WORK/results.tsv"
		FAILED_ROWS+=("$row")
	fi
}

call_rows() {
	: >"$WORK/results.tsv"
	local auth started
	for auth in $KAMAILIO_CALL_ROWS; do
		start_kamailio_calls "$auth"
		call_row "Kamailio stateful, $([ "$auth" = auth ] && echo "digest MD5" || echo "no auth")"
		stop "$SERVER_PID"
	done
	for auth in $KAMAILIO_RTPENGINE_ROWS; do
		start_kamailio_rtpengine "$auth"
		call_row "Kamailio stateful + rtpengine, $([ "$auth" = auth ] && echo "digest MD5" || echo "no auth")"
		stop_kamailio_rtpengine
	done
	[ "$MODE" = kamailio-calls ] && return
	started=0
	start_pbx_calls rate || started=$?
	call_row "pbx B2BUA, digest MD5" "$started"
	stop "$SERVER_PID"
}

print_call_table() {
	echo
	echo "Rates are calls per second: INVITE → [407 → ACK → INVITE] → 100/180 → 200 → ACK → BYE → 200, each held"
	echo "$CALL_HOLD_MS ms. Search steps last ${STEP_S} s (pbx restarted before each), sustain steps ${SUSTAIN_S} s. Setup is"
	echo "SIPp's mean INVITE → 200 time (407 round included); setup, retransmissions (both phones) and CPU are those"
	echo "of the sustain step when there is one, else of the best search step."
	echo
	echo "| server | search: held (${STEP_S} s) | search: failed | sustained (${SUSTAIN_S} s) | setup (ms) | retransmissions | server CPU per call (µs) | note |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
	awk -F'\t' '{
		split($6, b, " "); split($8, c, " ")
		if (c[1] == "ok") { b[3] = c[3]; b[4] = c[4]; b[5] = c[5] }
		printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $4, ($5 == 0 ? "-" : $5), $7, b[3], b[4], b[5], $9
	}' "$WORK/results.tsv"
	echo
	echo "Every step (row, generator, hold, rate, verdict, achieved/s, failed, retransmissions, setup ms, server"
	echo "CPU µs/call, SIPp CPU % of one core (calling+called phone), datagrams dropped on the server's SIP socket,"
	echo "datagrams dropped on any UDP socket of the machine):"
	echo
	echo '```'
	cat "$WORK/steps.tsv"
	echo '```'
}

# ---- calls with media, memory per call (pbx only) ----

# A second of PCMU silence, looped by SIPp's rtp_stream: 50 packets of 160 bytes a second.
# SIPp reads it when it loads a call scenario, media or not.
make_audio() { head -c 8000 /dev/zero | tr '\0' '\377' >"$WORK/silence.pcmu"; }

# media_window: run while every call of a media step is up (ON_UP of run_calls): reads pbx's
# relay counters, CPU and kernel drops over MEDIA_MEASURE_S into $WORK/media-window.
media_window() {
	sleep "$MEDIA_UP_S"
	local active in0 out0 dropped0 k0 cpu0 t0 in1 out1 dropped1 k1 cpu1 t1
	active=$(metric pbx_calls_active)
	in0=$(metric pbx_rtp_packets_total 'direction="in"') out0=$(metric pbx_rtp_packets_total 'direction="out"')
	dropped0=$(metric pbx_rtp_dropped_total) k0=$(rtp_socket_drops) cpu0=$(cpu_ticks "$SERVER_PID") t0=$(date +%s.%N)
	sleep "$MEDIA_MEASURE_S"
	in1=$(metric pbx_rtp_packets_total 'direction="in"') out1=$(metric pbx_rtp_packets_total 'direction="out"')
	dropped1=$(metric pbx_rtp_dropped_total) k1=$(rtp_socket_drops) cpu1=$(cpu_ticks "$SERVER_PID") t1=$(date +%s.%N)
	if [[ "$active $in0 $out0 $dropped0 $in1 $out1 $dropped1" == *x* ]]; then
		log "media: pbx's /metrics did not answer within 5 s"
		return
	fi
	echo "$active $((in1 - in0)) $((out1 - out0)) $((dropped1 - dropped0)) $((k1 - k0))" \
		"$(awk -v c=$((cpu1 - cpu0)) -v h="$TICKS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f %.2f", 100 * c / h / (b - a), b - a }')" \
		"$(rss_kib "$SERVER_PID")" \
		"$(awk -v c=$((cpu1 - cpu0)) -v h="$TICKS" -v p=$((out1 - out0)) 'BEGIN { printf "%.2f", (p > 0 ? 1e6 * c / h / p : 0) }')" \
		>"$WORK/media-window"
}

# media_step n → prints "ok|fail"; 0 if n concurrent calls, each sending and receiving 50 RTP
# packets a second, were relayed with nothing lost or dropped inside pbx.
media_step() {
	local n=$1 held=ok
	local up_s=$((n / MEDIA_SETUP_RATE + 3))
	local hold_s=$((up_s + MEDIA_MEASURE_S + 3))
	fresh
	rm -f "$WORK/media-window"
	CALLS=$n RATE=$MEDIA_SETUP_RATE HOLD_MS=$((hold_s * 1000)) LIMIT=$((n + 10)) SECONDS_MAX=$((hold_s * 2 + 60)) \
		MEDIA_UP_S=$up_s ON_UP=media_window run_calls "media-$n" "-set media 1" "-set media 1"
	local failed=$RUN_FAILED
	local active=0 pin=0 pout=0 dropped=0 kdrops=0 cpu=0 secs=1 rss=0 us_per_packet=0
	# No window (pbx's /metrics did not answer): every reading stays 0 and the step fails.
	[ -s "$WORK/media-window" ] && read -r active pin pout dropped kdrops cpu secs rss us_per_packet <"$WORK/media-window"
	local expected=$((n * 100)) rate_in rate_out
	rate_in=$(awk -v p="$pin" -v s="$secs" 'BEGIN { printf "%.0f", p / s }')
	rate_out=$(awk -v p="$pout" -v s="$secs" 'BEGIN { printf "%.0f", p / s }')
	# in − out: what came in and did not go out within the window. Packets queued inside pbx at
	# either reading count too (the queue changed by some hundred packets between readings at
	# 100 calls): up to 2 per stream, 40 ms of audio, is taken for packets in flight.
	local lost=$((pin - pout))
	# active: pbx_calls_active during the window, when pbx exports it (0 when it does not).
	if [ "$failed" -ne 0 ] || [ ! -s "$WORK/media-window" ] || { [ "$active" -ne 0 ] && [ "$active" -ne "$n" ]; } ||
		[ "$dropped" -ne 0 ] || [ "$kdrops" -ne 0 ] ||
		[ "$lost" -gt $((4 * n)) ] || [ $((rate_in * 100)) -lt $((expected * 95)) ]; then
		held=fail
	fi
	kill -0 "$SERVER_PID" 2>/dev/null || held=died
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$held" "$failed" "$active" "$expected" "$rate_in" \
		"$rate_out" "$lost" "$dropped" "$kdrops" "$cpu" "$us_per_packet" "$rss" "$(phone_cpu "$LAST_UAC")+$(phone_cpu "$LAST_UAS")" \
		>>"$WORK/media.tsv"
	log "media: $n calls → $held (failed $failed, active $active, RTP in $rate_in/s of $expected/s, out $rate_out/s," \
		"in−out $lost, pbx dropped $dropped, kernel dropped $kdrops, pbx CPU $cpu % of a core, $us_per_packet µs per relayed packet, RSS $rss KiB," \
		"SIPp CPU $(phone_cpu "$LAST_UAC")+$(phone_cpu "$LAST_UAS") %)"
	sleep "$COOLDOWN_S"
	echo "$held"
	[ "$held" = ok ]
}

# The concurrent-calls ramp of a media row: STEP (a function taking the number of calls) at
# MEDIA_START, doubling while it holds up to MEDIA_MAX, then BISECT_STEPS between the last
# number that held and the first that did not. Leaves "HELD FIRST_FAILED" in RAMP_RESULT.
media_ramp() {
	local step=$1
	local n=$MEDIA_START lo=0 hi=0 mid i=0
	while [ "$n" -le "$MEDIA_MAX" ] && ! past_deadline; do
		if "$step" "$n" >/dev/null; then lo=$n n=$((n * 2)); else
			hi=$n
			break
		fi
	done
	while [ "$hi" -gt 0 ] && [ "$i" -lt "$BISECT_STEPS" ] && ! past_deadline; do
		mid=$(((lo + hi) / 2 / 10 * 10))
		[ "$mid" -le "$lo" ] || [ "$mid" -ge "$hi" ] && break
		if "$step" "$mid" >/dev/null; then lo=$mid; else hi=$mid; fi
		i=$((i + 1))
	done
	RAMP_RESULT="$lo $hi"
}

media_rows() {
	: >"$WORK/media.tsv"
	if ! start_pbx_calls media || ! probe_call "pbx media"; then
		FAILED_ROWS+=("pbx media")
		stop "$SERVER_PID"
		return
	fi
	media_ramp media_step
	stop "$SERVER_PID"
	MEDIA_RESULT=$RAMP_RESULT
}

print_media_table() {
	local lo hi
	read -r lo hi <<<"${MEDIA_RESULT:-0 0}"
	echo
	if [ ! -s "$WORK/media.tsv" ]; then
		echo "Media: no reading (no call went through)."
		return
	fi
	echo "Concurrent calls with G.711 (PCMU, 20 ms) both ways through pbx's relay, every call up for ${MEDIA_MEASURE_S} s of"
	echo "measurement: the most calls relayed with nothing lost = **$lo** (first that failed: ${hi/#0/-})."
	echo
	echo "| calls | verdict | failed calls | active | RTP in expected (pkt/s) | in (pkt/s) | out (pkt/s) | in − out | pbx dropped | kernel dropped (pbx RTP sockets) | pbx CPU (% of a core) | pbx CPU per relayed packet (µs) | pbx RSS (KiB) | SIPp CPU (%) |"
	echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
	awk -F'\t' '{ printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n" }' "$WORK/media.tsv"
}

# Memory per call: RSS with MEM_CALLS calls up (no media) against RSS idle, and against RSS after
# a warm-up of as many calls (glibc keeps what the first calls freed for the next ones).
call_memory() {
	if ! start_pbx_calls memory || ! probe_call "pbx memory"; then
		echo
		echo "Memory per call: no reading (no call went through)."
		FAILED_ROWS+=("pbx memory")
		stop "$SERVER_PID"
		return
	fi
	sleep 2
	local idle before during failed k=$MEM_CALLS up_s=$((MEM_CALLS / MEDIA_SETUP_RATE + 3))
	idle=$(rss_kib "$SERVER_PID")
	log "memory: warm-up, $k calls held 1 s at $MEDIA_SETUP_RATE/s"
	CALLS=$k RATE=$MEDIA_SETUP_RATE HOLD_MS=1000 LIMIT=$((k + 10)) SECONDS_MAX=$((up_s * 3 + 60)) ON_UP='' \
		run_calls mem-warmup "" ""
	log "memory: warm-up → $RUN_FAILED failed, $RUN_RETRANS retransmissions; settling ${CALL_SETTLE_S} s"
	sleep "$CALL_SETTLE_S"
	before=$(rss_kib "$SERVER_PID")
	log "memory: $k calls held ${MEM_HOLD_S} s"
	MEM_UP_S=$up_s
	rm -f "$WORK/memory-window"
	CALLS=$k RATE=$MEDIA_SETUP_RATE HOLD_MS=$((MEM_HOLD_S * 1000)) LIMIT=$((k + 10)) \
		SECONDS_MAX=$((MEM_HOLD_S * 2 + 60)) ON_UP=memory_window run_calls mem "" ""
	failed=$RUN_FAILED
	local active=0
	[ -s "$WORK/memory-window" ] && read -r active during <"$WORK/memory-window"
	# Without the pbx_calls_active gauge, count the calls that did not fail as up.
	[ "$active" -gt 0 ] || active=$((k - failed))
	stop "$SERVER_PID"
	echo
	echo "| pbx RSS | KiB |"
	echo "| --- | ---: |"
	echo "| idle (extension $CALLEE registered, one probe call made) | $idle |"
	echo "| after a warm-up of $k calls, settled ${CALL_SETTLE_S} s (before) | $before |"
	echo "| $active calls up (of $k; $failed failed) | ${during:-?} |"
	echo
	if [ -n "${during:-}" ] && [ "$active" -gt 0 ]; then
		echo "Bytes per active call: (up − idle) × 1024 / $active = **$(((during - idle) * 1024 / active))**;" \
			"(up − before) × 1024 / $active = $(((during - before) * 1024 / active)) (target ≤ 32,768)."
	else
		echo "No reading: the calls did not come up (see the log above)."
	fi
}

memory_window() {
	sleep "$MEM_UP_S"
	local active
	active=$(metric pbx_calls_active)
	echo "${active/x/0} $(rss_kib "$SERVER_PID")" >"$WORK/memory-window"
}

# ---- Kamailio + rtpengine (calls, kamailio-calls, calls-check, calls-media, rtpengine-check) ----

# rtpengine in userspace (--table=-1: no kernel module), on 127.0.0.1, its NG control port and
# HTTP /metrics on PORT_BASE+12/+13, RTPENGINE_PORTS for media; in the foreground, so it is this
# script's child and stops with it. Sets RTPE_PID; 1 if it did not answer /metrics within 10 s.
start_rtpengine() {
	local dir=$WORK/rtpengine
	mkdir -p "$dir"
	rtpengine --config-file=none --table=-1 --interface=127.0.0.1 --listen-ng="127.0.0.1:$RTPE_NG_PORT" \
		--listen-http="127.0.0.1:$RTPE_HTTP_PORT" --port-min="${RTPENGINE_PORTS%-*}" --port-max="${RTPENGINE_PORTS#*-}" \
		--foreground --log-stderr --log-level=4 --pidfile="$dir/rtpengine.pid" >>"$dir/rtpengine.log" 2>&1 &
	RTPE_PID=$!
	PIDS+=("$RTPE_PID")
	for _ in $(seq 100); do
		[ "$(rtpengine_metric rtpengine_uptime_seconds)" != x ] && return 0
		kill -0 "$RTPE_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "rtpengine did not start (or another process has its ports $RTPE_NG_PORT/$RTPE_HTTP_PORT); see $dir/rtpengine.log"
	tail -5 "$dir/rtpengine.log" >&2
	return 1
}

rtpengine_metric() { # name [label]: one sample of rtpengine's /metrics ("x" when it did not answer)
	local page
	page=$(curl -sf --max-time 5 "http://127.0.0.1:$RTPE_HTTP_PORT/metrics" 2>/dev/null) || {
		echo x
		return
	}
	echo "$page" | awk -v n="$1" -v l="${2:-}" '$1 == n || (l != "" && $1 == n "{" l "}") { v = $2 } END { printf "%.0f\n", v + 0 }'
}

# Kamailio (kamailio_calls.cfg -A WITH_RTPENGINE) in front of a fresh rtpengine: sets SERVER_PID
# (Kamailio's: the called phone's REGISTER goes there) and RTPE_PID.
start_kamailio_rtpengine() { # auth|noauth
	start_rtpengine || exit 1
	start_kamailio_calls "$1" -A WITH_RTPENGINE -A "RTPENGINE_SOCK=\"udp:127.0.0.1:$RTPE_NG_PORT\""
	SERVER_KIND=kamailio-rtpengine
}

stop_kamailio_rtpengine() {
	stop "$SERVER_PID"
	stop "$RTPE_PID"
}

# Kernel drops on rtpengine's RTP sockets (as rtp_socket_drops, over RTPENGINE_PORTS).
rtpengine_socket_drops() { RTP_PORTS=$RTPENGINE_PORTS rtp_socket_drops; }

# rtpengine_media_window: ON_UP of a media step through Kamailio + rtpengine: rtpengine's
# counters, Kamailio's and rtpengine's CPU and kernel drops over MEDIA_MEASURE_S.
rtpengine_media_window() {
	sleep "$MEDIA_UP_S"
	local sessions p0 e0 k0 cpu0 t0 p1 e1 k1 cpu1 t1
	sessions=$(rtpengine_metric rtpengine_sessions 'type="own"')
	p0=$(rtpengine_metric rtpengine_packets_total 'type="userspace"') e0=$(rtpengine_metric rtpengine_packet_errors_total 'type="userspace"')
	k0=$(rtpengine_socket_drops) cpu0=$(cpu_ticks "$SERVER_PID" "$RTPE_PID") t0=$(date +%s.%N)
	sleep "$MEDIA_MEASURE_S"
	p1=$(rtpengine_metric rtpengine_packets_total 'type="userspace"') e1=$(rtpengine_metric rtpengine_packet_errors_total 'type="userspace"')
	k1=$(rtpengine_socket_drops) cpu1=$(cpu_ticks "$SERVER_PID" "$RTPE_PID") t1=$(date +%s.%N)
	if [[ "$sessions $p0 $e0 $p1 $e1" == *x* ]]; then
		log "media: rtpengine's /metrics did not answer within 5 s"
		return
	fi
	# sessions packets errors kernel-drops cpu% seconds cpu-ticks rss(rtpengine)
	echo "$sessions $((p1 - p0)) $((e1 - e0)) $((k1 - k0))" \
		"$(awk -v c=$((cpu1 - cpu0)) -v h="$TICKS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f %.2f", 100 * c / h / (b - a), b - a }')" \
		"$((cpu1 - cpu0)) $(rss_kib "$RTPE_PID")" >"$WORK/rtpengine-media-window"
}

# rtpengine_media_step n → prints "ok|fail"; 0 if n concurrent calls, 50 RTP packets a second
# each way, were relayed by rtpengine with nothing lost (see the header).
rtpengine_media_step() {
	local n=$1 held=ok
	local up_s=$((n / MEDIA_SETUP_RATE + 3))
	local hold_s=$((up_s + MEDIA_MEASURE_S + 3))
	fresh
	rm -f "$WORK/rtpengine-media-window"
	CALLS=$n RATE=$MEDIA_SETUP_RATE HOLD_MS=$((hold_s * 1000)) LIMIT=$((n + 10)) SECONDS_MAX=$((hold_s * 2 + 60)) \
		MEDIA_UP_S=$up_s ON_UP=rtpengine_media_window run_calls "rtpengine-media-$n" "-set media 1" "-set media 1"
	local failed=$RUN_FAILED
	local sessions=0 packets=0 errors=0 kdrops=0 cpu=0 secs=1 ticks=0 rss=0
	[ -s "$WORK/rtpengine-media-window" ] && read -r sessions packets errors kdrops cpu secs ticks rss <"$WORK/rtpengine-media-window"
	local expected=$((n * 100)) rate us_per_packet=-
	rate=$(awk -v p="$packets" -v s="$secs" 'BEGIN { printf "%.0f", p / s }')
	[ "$packets" -gt 0 ] && us_per_packet=$(awk -v c="$ticks" -v h="$TICKS" -v p="$packets" 'BEGIN { printf "%.2f", c / h * 1000000 / p }')
	if [ "$failed" -ne 0 ] || [ ! -s "$WORK/rtpengine-media-window" ] || [ "$sessions" -ne "$n" ] ||
		[ "$errors" -ne 0 ] || [ "$kdrops" -ne 0 ] || [ $((rate * 100)) -lt $((expected * 95)) ]; then
		held=fail
	fi
	kill -0 "$RTPE_PID" 2>/dev/null && kill -0 "$SERVER_PID" 2>/dev/null || held=died
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$held" "$failed" "$sessions" "$expected" "$rate" \
		"$errors" "$kdrops" "$cpu" "$us_per_packet" "$rss" "$(phone_cpu "$LAST_UAC")+$(phone_cpu "$LAST_UAS")" \
		>>"$WORK/rtpengine-media.tsv"
	log "rtpengine media: $n calls → $held (failed $failed, sessions $sessions, relayed $rate/s of $expected/s," \
		"errors $errors, kernel dropped $kdrops, Kamailio+rtpengine CPU $cpu % of a core = $us_per_packet µs/packet," \
		"rtpengine RSS $rss KiB, SIPp CPU $(phone_cpu "$LAST_UAC")+$(phone_cpu "$LAST_UAS") %)"
	sleep "$COOLDOWN_S"
	echo "$held"
	[ "$held" = ok ]
}

# The media ramp of media_rows (MEDIA_START doubling to MEDIA_MAX, then BISECT_STEPS) through
# Kamailio (digest) + rtpengine.
rtpengine_media_rows() {
	: >"$WORK/rtpengine-media.tsv"
	start_kamailio_rtpengine auth
	if ! probe_call "Kamailio + rtpengine media"; then
		FAILED_ROWS+=("Kamailio + rtpengine media")
		stop_kamailio_rtpengine
		return
	fi
	media_ramp rtpengine_media_step
	stop_kamailio_rtpengine
	RTPENGINE_MEDIA_RESULT=$RAMP_RESULT
}

print_rtpengine_media_table() {
	local lo hi
	read -r lo hi <<<"${RTPENGINE_MEDIA_RESULT:-0 0}"
	echo
	if [ ! -s "$WORK/rtpengine-media.tsv" ]; then
		echo "Kamailio + rtpengine media: no reading (no call went through)."
		return
	fi
	echo "The same concurrent G.711 calls through Kamailio (digest) + rtpengine $(rtpengine --version 2>&1 | sed -n 's/^Version: //p')"
	echo "(userspace, --table=-1), every call up for ${MEDIA_MEASURE_S} s of measurement: the most calls relayed with"
	echo "nothing lost = **$lo** (first that failed: ${hi/#0/-}). CPU per relayed packet: Kamailio's and rtpengine's"
	echo "CPU over the window / the packets rtpengine relayed in it (rtpengine_packets_total)."
	echo
	echo "| calls | verdict | failed calls | rtpengine sessions | RTP expected (pkt/s) | relayed (pkt/s) | packet errors | kernel dropped (rtpengine RTP sockets) | Kamailio + rtpengine CPU (% of a core) | CPU per relayed packet (µs) | rtpengine RSS (KiB) | SIPp CPU (%) |"
	echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
	awk -F'\t' '{ printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n" }' "$WORK/rtpengine-media.tsv"
}

# ---- one node against three (cluster, cluster-check) ----

NODES=(n1 n2 w3)
NODE_PIDS=()

node_port() { echo $((PORT_BASE + 60 + 10 * $1 + $2)); } # node, what: 0 SIP, 1 HTTP, 2 Raft, 3 actor mesh

# start_node i cluster extensions(users|calls|none): node i of the cluster whose data is in
# $WORK/<cluster> (its log beside it: <cluster>.<node>.log); a call cluster's voters each take
# half of RTP_PORTS.
start_node() {
	local i=$1 cluster=$2 dir=$WORK/$2/${NODES[$1]} extra=() j
	mkdir -p "$dir/data"
	{
		registrar_config
		case $3 in users) user_extensions ;; calls) call_extensions ;; esac
		printf '\n[cluster]\nnode = "%s"\ncerts = "%s"\nlisten = "127.0.0.1:%s"\n' "${NODES[$i]}" "$WORK/cluster-certs" \
			"$(node_port "$i" 2)"
		for j in 0 1 2; do
			printf '\n[[cluster.members]]\nname = "%s"\naddress = "127.0.0.1:%s"\nrole = "%s"\n' "${NODES[$j]}" \
				"$(node_port "$j" 2)" "$([ "$j" -eq 2 ] && echo witness || echo voter)"
		done
	} >"$dir/pbx.toml"
	if [ "$cluster" = cluster-calls ] && [ "$i" -lt 2 ]; then
		local lo=${RTP_PORTS%-*} hi=${RTP_PORTS#*-} mid
		mid=$(((lo + hi + 1) / 4 * 2))
		extra=(--rtp-ports "$([ "$i" -eq 0 ] && echo "$lo-$((mid - 1))" || echo "$mid-$hi")")
	fi
	RUST_LOG=$PBX_LOG "$PBX" node --data-dir "$dir/data" --config "$dir/pbx.toml" --sip-listen "127.0.0.1:$(node_port "$i" 0)" --sip-tls-listen off \
		--http-listen "127.0.0.1:$(node_port "$i" 1)" ${extra[@]+"${extra[@]}"} >>"$WORK/$cluster.${NODES[$i]}.log" 2>&1 &
	NODE_PIDS[i]=$!
	PIDS+=("$!")
}

# node_leader i cluster: the leader node i names in GET /api/v1/cluster (nothing if none yet)
node_leader() {
	local token=$WORK/$2/${NODES[$1]}/data/admin.token
	[ -s "$token" ] || return 0
	curl -sf --max-time 2 -H "Authorization: Bearer $(cat "$token")" "http://127.0.0.1:$(node_port "$1" 1)/api/v1/cluster" \
		2>/dev/null | sed -n 's/.*"leader":"\([^"]*\)".*/\1/p' || true
}

# await_leader cluster i…: prints the leader every node i… names, once they agree (30 s at most)
await_leader() {
	local cluster=$1 deadline=$(($(date +%s) + 30)) first i
	shift
	while [ "$(date +%s)" -lt "$deadline" ]; do
		first=$(node_leader "$1" "$cluster")
		for i in "$@"; do
			kill -0 "${NODE_PIDS[$i]}" 2>/dev/null || return 1
			[ "$(node_leader "$i" "$cluster")" = "$first" ] || first=""
		done
		if [ -n "$first" ]; then
			echo "$first"
			return 0
		fi
		sleep 0.2
	done
	return 1
}

cluster_failed() { # cluster why
	log "cluster: $2; see $WORK/$1.*.log"
	tail -n 3 "$WORK/$1".*.log >&2 || true
	exit 1
}

# start_cluster rate|calls leader|follower: the three nodes, the voters first (one of them
# leads before the witness starts). The load goes to the voter named. Sets SERVER_PID and
# SERVER_PORT (that voter's) and NODE_PIDS.
start_cluster() {
	local kind=$1 via=$2 cluster=cluster-$1 extensions=none leader i
	CLUSTER_KIND=$kind CLUSTER_VIA=$via
	[ -d "$WORK/cluster-certs" ] || "$PBX" cluster init --out "$WORK/cluster-certs" --nodes n1,n2,w3 >/dev/null
	# At the first start n1 declares the extensions, one Raft entry each; later starts restore them.
	[ -d "$WORK/$cluster" ] || extensions=$([ "$kind" = rate ] && echo users || echo calls)
	start_node 0 "$cluster" "$extensions"
	start_node 1 "$cluster" none
	await_leader "$cluster" 0 1 >/dev/null || cluster_failed "$cluster" "n1 and n2 agreed on no leader within 30 s"
	start_node 2 "$cluster" none
	leader=$(await_leader "$cluster" 0 1 2) || cluster_failed "$cluster" "the witness did not join within 30 s"
	case $leader in
	n1) i=0 ;;
	n2) i=1 ;;
	*) cluster_failed "$cluster" "$leader leads, not a voter" ;;
	esac
	[ "$via" = leader ] || i=$((1 - i))
	SERVER_PID=${NODE_PIDS[$i]} SERVER_PORT=$(node_port "$i" 0) SERVER_KIND=cluster
	if [ "$kind" = calls ]; then
		register_callee "${READY_S:-120}" || cluster_failed "$cluster" "${NODES[$i]} did not register extension $CALLEE"
	else
		# n1 writes the extensions in order: the last user known means every user is.
		wait_ready auth "$([ "$extensions" = none ] && echo 60 || echo 1200)" "$WORK/last-user.csv" ||
			cluster_failed "$cluster" "${NODES[$i]} did not answer a REGISTER of the last user"
	fi
	log "cluster: $leader leads, load through ${NODES[$i]} (the $via)"
}

stop_cluster() {
	local pid
	for pid in "${NODE_PIDS[@]+"${NODE_PIDS[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${NODE_PIDS[@]+"${NODE_PIDS[@]}"}"; do stop "$pid"; done
	NODE_PIDS=()
}

# The data of the stopped cluster's three nodes, kept as the state every step of a row starts
# from (fresh copies it back): an overloaded cluster can need minutes of light load to catch up
# (docs/PERFORMANCE.md, "Cluster"), and a step must not inherit that from the step before.
keep_cluster() { # cluster
	rm -rf "$WORK/$1.kept"
	cp -a "$WORK/$1" "$WORK/$1.kept"
}

# Every user registered once with the Call-IDs of REFRESH_RUN, so that every flow of a refresh
# row is a refresh of a binding the server holds.
warm_up() {
	local out
	log "warm-up: $USERS registrations at $WARM_RATE/s with the refresh rows' Call-IDs"
	out=$("$LOAD" --target "127.0.0.1:$SERVER_PORT" --local "127.0.0.1:$LOAD_PORT" --users "$WORK/users.csv" \
		--domain "$REALM" --rate "$WARM_RATE" --calls "$USERS" --auth md5 --expires 3600 --call-id per-user \
		--run "$REFRESH_RUN" --cseq-base "$(cseq_base "$USERS")" --deadline-s 300) ||
		log "warm-up: some registrations failed; the first flows of those users are new bindings: $out"
	echo "warm-up $out" >>"$WORK/register_load.log"
}

cluster_rate_rows() {
	: >"$WORK/results.tsv"
	local flows via
	start_cluster rate leader
	stop_cluster
	cp -a "$WORK/cluster-rate" "$WORK/cluster-rate.first"
	for flows in refresh new; do
		start_pbx rate
		[ "$flows" = refresh ] && warm_up
		ramp "pbx, 1 node" register_load md5 "$flows" "$([ "$flows" = refresh ] && echo yes || echo no)"
		stop "$SERVER_PID"
		for via in leader follower; do
			# Every row starts from the cluster as its first start left it: extensions, no bindings.
			rm -rf "$WORK/cluster-rate"
			cp -a "$WORK/cluster-rate.first" "$WORK/cluster-rate"
			start_cluster rate "$via"
			[ "$flows" = refresh ] && warm_up
			stop_cluster
			keep_cluster cluster-rate
			ramp "pbx, 3 nodes, via the $via" register_load md5 "$flows" "$([ "$flows" = refresh ] && echo yes || echo no)"
			stop_cluster
		done
	done
}

cluster_call_rows() {
	: >"$WORK/results.tsv"
	local started=0
	start_pbx_calls rate || started=$?
	call_row "pbx B2BUA, 1 node" "$started"
	stop "$SERVER_PID"
	start_cluster calls "$CLUSTER_CALL_VIA"
	stop_cluster
	keep_cluster cluster-calls
	fresh
	call_row "pbx B2BUA, 3 nodes, via the $CLUSTER_CALL_VIA"
	stop_cluster
}

# ---- a stranger's flood while phones call (pbx only) ----

# flood_sources rate: how many source addresses keep each under FLOOD_PER_SOURCE INVITEs/s
flood_sources() {
	local n=$((($1 + FLOOD_PER_SOURCE - 1) / FLOOD_PER_SOURCE))
	echo $((n < FLOOD_SOURCES_MIN ? FLOOD_SOURCES_MIN : n))
}

# kv line key: the value of key=value in a generator's summary line
kv_of() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }

# flood_step label rate sources → prints "verdict sent answers per_invite failed cpu_us setup_ms";
# 0 if it held. Calls at FLOOD_CALL_RATE for FLOOD_STEP_S; the flood starts with them (ON_UP).
# Verdicts: ok (every call succeeded), fail (a call failed), short (the calls succeeded but the
# generator sent under 95 % of the rate: the step says nothing about that rate), died.
flood_step() {
	local label=$1 rate=$2 sources=$3 duration=$FLOOD_STEP_S
	local calls=$((FLOOD_CALL_RATE * duration)) before after held=ok drops0 drops limited
	drops0=$(socket_drops "$SERVER_PORT")
	before=$(server_cpu)
	rm -f "$WORK/flood.out"
	FLOOD_RATE=$rate FLOOD_N=$sources FLOOD_DRAIN_S=2
	CALLS=$calls RATE=$FLOOD_CALL_RATE HOLD_MS=0 LIMIT=$((FLOOD_CALL_RATE * 10 + 100)) \
		SECONDS_MAX=$((duration * 3 + 60)) ON_UP=flood_start run_calls "flood-${label// /-}-$rate-$sources" "" ""
	wait "$FLOOD_PID" 2>/dev/null || true
	after=$(server_cpu)
	drops=$(($(socket_drops "$SERVER_PORT") - drops0))
	limited=$(metric pbx_sip_rate_limited_total)
	local line sent achieved answers per_invite cpu_us gen_cpu codes
	line=$(tail -1 "$WORK/flood.out" 2>/dev/null || true)
	echo "$label $rate $sources $line" >>"$WORK/invite_flood.log"
	sent=$(kv_of "$line" sent) achieved=$(kv_of "$line" achieved) answers=$(kv_of "$line" answers)
	per_invite=$(kv_of "$line" per_invite)
	gen_cpu=$(awk -v c="$(kv_of "$line" cpu_s)" -v e="$(kv_of "$line" elapsed_s)" 'BEGIN { if (e > 0) printf "%.0f", 100 * c / e; else print "-" }')
	codes=$(echo "$line" | tr ' ' '\n' | sed -n 's/^code_//p' | tr '=' ':' | paste -sd, -)
	cpu_us=$(((after - before) * 1000000 / TICKS / (${sent:-0} + 1)))
	if [ "$RUN_FAILED" -ne 0 ] || [ $((RUN_ACHIEVED * 100)) -lt $((FLOOD_CALL_RATE * 95)) ]; then
		held=fail
	elif [ $((${achieved:-0} * 100)) -lt $((rate * 95)) ]; then
		held=short
	fi
	kill -0 "$SERVER_PID" 2>/dev/null || held=died
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$rate" "$sources" "$held" \
		"${sent:--}" "${achieved:--}" "$gen_cpu" "${answers:--}" "${per_invite:--}" "${codes:--}" "$RUN_FAILED" \
		"$RUN_SETUP_MS" "$RUN_RETRANS" "$cpu_us" "$drops" "$limited" >>"$WORK/steps.tsv"
	log "flood $label rate=$rate INVITEs/s from $sources sources → $held (sent ${sent:-?}, ${achieved:-?}/s, generator CPU" \
		"$gen_cpu %; answers ${answers:-?} = ${per_invite:-?} per INVITE [${codes:-}]; calls failed $RUN_FAILED of $calls," \
		"setup $RUN_SETUP_MS ms, retrans $RUN_RETRANS; pbx CPU ${cpu_us} µs per flood INVITE, dropped on pbx's socket" \
		"$drops, rate-limited $limited)"
	sleep "$COOLDOWN_S"
	echo "$held ${sent:--} ${answers:--} ${per_invite:--} $RUN_FAILED $cpu_us $RUN_SETUP_MS"
	[ "$held" = ok ]
}

flood_start() {
	# One source address per socket: a thousand and more of them at the top rates.
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	timeout $((FLOOD_STEP_S + FLOOD_DRAIN_S + 30)) "$FLOOD" --target "127.0.0.1:$SERVER_PORT" --rate "$FLOOD_RATE" \
		--duration-s "${FLOOD_DURATION_S:-$FLOOD_STEP_S}" --sources "$FLOOD_N" --threads "$((FLOOD_THREADS < FLOOD_N ? FLOOD_THREADS : FLOOD_N))" \
		--drain-s "$FLOOD_DRAIN_S" >"$WORK/flood.out" 2>&1 &
	FLOOD_PID=$!
	PIDS+=("$FLOOD_PID")
	# Started in a step's subshell: the exit trap finds it (a `timeout`) through this file.
	echo "$FLOOD_PID" >>"$WORK/phones.pids"
}

# answers_probe label: what a few unauthenticated INVITEs get back, every retransmission
# included: 100 INVITEs (20/s from 10 sources) and 40 s of listening (Timer H is 32 s), no calls.
answers_probe() {
	local label=$1 line
	FLOOD_RATE=20 FLOOD_N=10 FLOOD_DRAIN_S=40 FLOOD_DURATION_S=5 flood_start
	wait "$FLOOD_PID" 2>/dev/null || true
	line=$(tail -1 "$WORK/flood.out" 2>/dev/null || true)
	echo "$label probe $line" >>"$WORK/invite_flood.log"
	printf '%s\t%s\t%s\t%s\n' "$label" "$(kv_of "$line" sent)" "$(kv_of "$line" per_invite)" \
		"$(echo "$line" | tr ' ' '\n' | sed -n 's/^code_//p' | tr '=' ':' | paste -sd, -)" >>"$WORK/answers.tsv"
	log "flood $label: answers to 100 INVITEs over 45 s: $line"
}

# flood_row label binary: the ramp for one pbx binary → one line of $WORK/results.tsv, then
# one step from a single source → one line of $WORK/one-source.tsv
flood_row() {
	local label=$1 binary=$2 lo=0 hi=0 rate=$FLOOD_START best="- - - - - - -" out note=""
	local PBX=$binary
	start_pbx_calls "flood-$label" || {
		printf '%s\t-\t-\t%s\tpbx did not start\n' "$label" "$best" >>"$WORK/results.tsv"
		return
	}
	if ! probe_call "flood $label"; then
		stop "$SERVER_PID"
		printf '%s\t-\t-\t%s\tno call went through\n' "$label" "$best" >>"$WORK/results.tsv"
		return
	fi
	answers_probe "$label"
	while [ "$rate" -le "$FLOOD_MAX" ]; do
		past_deadline && note="deadline" && break
		stop "$SERVER_PID"
		start_pbx_calls "flood-$label" || break
		if out=$(flood_step "$label" "$rate" "$(flood_sources "$rate")"); then
			lo=$rate best=$out
			rate=$((rate * 2))
		else
			case $out in
			short*) note="the generator fell short at $rate/s" ;;
			*) hi=$rate ;;
			esac
			break
		fi
	done
	local i=0 mid
	while [ "$hi" -gt 0 ] && [ "$i" -lt "$BISECT_STEPS" ] && [ -z "$note" ]; do
		mid=$(((lo + hi) / 2 / 500 * 500))
		[ "$mid" -le "$lo" ] || [ "$mid" -ge "$hi" ] && break
		past_deadline && note="deadline" && break
		stop "$SERVER_PID"
		start_pbx_calls "flood-$label" || break
		if out=$(flood_step "$label" "$mid" "$(flood_sources "$mid")"); then lo=$mid best=$out; else
			case $out in
			short*) note="the generator fell short at $mid/s" && break ;;
			*) hi=$mid ;;
			esac
		fi
		i=$((i + 1))
	done
	[ "$hi" -eq 0 ] && [ -z "$note" ] && note="reached FLOOD_MAX"
	printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$lo" "$hi" "$best" "$note" >>"$WORK/results.tsv"
	# The same flood from one address: pbx's per-source limit (if it has one) drops most of it.
	if [ "$FLOOD_ONE_RATE" -gt 0 ] && ! past_deadline; then
		stop "$SERVER_PID"
		if start_pbx_calls "flood-$label"; then
			out=$(flood_step "$label, one source" "$FLOOD_ONE_RATE" 1) || true
			printf '%s\t%s\t%s\n' "$label" "$FLOOD_ONE_RATE" "$out" >>"$WORK/one-source.tsv"
		fi
	fi
	stop "$SERVER_PID"
}

flood_rows() {
	: >"$WORK/results.tsv"
	: >"$WORK/answers.tsv"
	: >"$WORK/one-source.tsv"
	[ -z "$PBX_BEFORE" ] || flood_row before "$PBX_BEFORE"
	flood_row now "$PBX"
}

print_flood_table() {
	echo
	echo "Unauthenticated INVITEs per second (each a new transaction, from loopback addresses 127.0.1.1 on, each"
	echo "sending at most $FLOOD_PER_SOURCE/s) while SIPp makes $FLOOD_CALL_RATE authenticated calls per second; a step ($FLOOD_STEP_S s,"
	echo "pbx restarted before each) holds when every call succeeded. Answers per INVITE: datagrams back per"
	echo "INVITE of 100 sent at 20/s and listened to for 40 s (every retransmission counted). CPU and call setup"
	echo "(SIPp's mean INVITE → 200, 407 round included) are those of the best step."
	echo
	echo "| pbx | flood held (INVITEs/s) | first that failed | answers per INVITE | answers by code | pbx CPU per flood INVITE (µs) | call setup (ms) | note |"
	echo "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"
	awk -F'\t' -v answers="$WORK/answers.tsv" '
		BEGIN { while ((getline l < answers) > 0) { split(l, f, "\t"); per[f[1]] = f[3]; codes[f[1]] = f[4] } }
		{ split($4, b, " "); printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, ($3 == 0 ? "-" : $3),
			per[$1], codes[$1], b[6], b[7], $5 }' "$WORK/results.tsv"
	if [ -s "$WORK/one-source.tsv" ]; then
		echo
		echo "One source ($FLOOD_STEP_S s from 127.0.1.1 alone, same calls):"
		echo
		echo "| pbx | INVITEs/s | verdict | answers per INVITE | calls failed | pbx CPU per flood INVITE (µs) | call setup (ms) |"
		echo "| --- | ---: | --- | ---: | ---: | ---: | ---: |"
		awk -F'\t' '{ split($3, b, " "); printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, b[1], b[4], b[5], b[6], b[7] }' \
			"$WORK/one-source.tsv"
	fi
	echo
	echo "Every step (pbx, rate, sources, verdict, sent, achieved/s, generator CPU % of one core, answers, answers"
	echo "per INVITE, answers by code, calls failed, call setup ms, call retransmissions, pbx CPU µs per flood INVITE,"
	echo "datagrams dropped on pbx's SIP socket, pbx_sip_rate_limited_total):"
	echo
	echo '```'
	cat "$WORK/steps.tsv"
	echo '```'
}

# ---- main ----

pbx_version() { # the commit, and whether the code pbx is built from differs from it
	local head dirty
	if [ -n "$PBX_BINARY" ]; then
		head=$(git -C "$(dirname "$PBX_BINARY")" rev-parse --short HEAD 2>/dev/null) || head='?'
		echo "$PBX_BINARY (the tree it is in: $head)"
		return
	fi
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
case $MODE in
calls | kamailio-calls | calls-check | calls-media | calls-profile | rtpengine-check) what=Call ;;
cluster | cluster-check) what="Cluster (REGISTER, calls)" ;;
flood | flood-check) what="Flood" ;;
*) what=REGISTER ;;
esac
echo "# $what load, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "kamailio $(kamailio -v | sed -n 's/^version: kamailio \([^ ]*\).*/\1/p') (children=$KAMAILIO_CHILDREN), rtpengine $(rtpengine --version 2>&1 | sed -n 's/^Version: //p'), $(sipp -v 2>&1 | grep -o 'SIPp v[^ -]*' | head -1), pbx $(pbx_version), STEP_S=$STEP_S, USERS=$USERS"
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
calls-profile)
	make_audio
	calls_profile
	;;
calls | kamailio-calls)
	make_audio
	call_rows
	print_call_table
	;;
calls-check)
	make_audio
	call_rows
	print_call_table
	call_memory
	media_rows
	print_media_table
	;;
cluster | cluster-check)
	REFRESH_RUN=1
	cluster_rate_rows
	print_rate_table
	echo
	echo "Refresh rows: every user registered once before the ramp, so each flow refreshes a binding (kept in memory,"
	echo "replicated in one entry per registrar.refresh_flush_s). New Call-ID rows: each flow a new binding, on 3 nodes"
	echo "committed by a majority before the 200. Server CPU: on 3 nodes, the three nodes' together."
	make_audio
	: >"$WORK/steps.tsv"
	call_rates
	PHASE_AT=$(date +%s)
	cluster_call_rows
	print_call_table
	;;
calls-media)
	make_audio
	call_memory
	media_rows
	print_media_table
	if [ "$RTPENGINE_MEDIA" = 1 ]; then
		PHASE_AT=$(date +%s)
		rtpengine_media_rows
		print_rtpengine_media_table
	fi
	;;
rtpengine-check)
	make_audio
	: >"$WORK/results.tsv"
	start_kamailio_rtpengine auth
	call_row "Kamailio stateful + rtpengine, digest MD5"
	stop_kamailio_rtpengine
	print_call_table
	rtpengine_media_rows
	print_rtpengine_media_table
	;;
flood | flood-check)
	make_audio
	flood_rows
	print_flood_table
	;;
esac
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); took $(($(date +%s) - STARTED_AT)) s"
if [ ${#FAILED_ROWS[@]} -gt 0 ]; then
	log "no call went through in: ${FAILED_ROWS[*]} (see the messages above)"
	exit 1
fi
