#!/system/bin/sh
# Sample the battery fuel gauge: fuelgauge.sh [DURATION_S [INTERVAL_S [STOPFILE]]]
# Runs for DURATION_S whole seconds (0 = until STOPFILE appears; default 10), one sample every INTERVAL_S
# (default 0.1; needs a fractional `sleep`, as toybox/busybox have). Stops early when STOPFILE exists.
# Output (parsed by profiler/energy/fuelgauge.py; raw vendor units, NA when a node is missing):
#   # autlearn-fuelgauge 1 clock=<realtime|uptime> interval=<s> duration=<s>
#   S <time_s> <current_now> <voltage_now> <charge_counter> <usb_online> <ac_online> <status...>
#   # end reason=<duration|stopfile> samples=<n>
# POSIX sh / mksh; time from $EPOCHREALTIME (mksh, bash 5) or /proc/uptime when that is unset.
SYSFS=${AUTLEARN_SYSFS:-/sys}
PS=$SYSFS/class/power_supply
dur=${1:-10}
interval=${2:-0.1}
stop=${3:-}

rd() {  # rd VAR FILE: first line of FILE into VAR, NA if unreadable
    _v=NA
    if [ -r "$2" ]; then
        IFS= read -r _v < "$2" 2>/dev/null || _v=NA
        [ -n "$_v" ] || _v=NA
    fi
    eval "$1=\$_v"
}

now() {  # sets t (seconds with fraction), sec, ms
    if [ -n "${EPOCHREALTIME:-}" ]; then
        t=$EPOCHREALTIME
    else
        read -r t _rest < /proc/uptime
    fi
    case $t in *,*) t="${t%%,*}.${t#*,}" ;; esac  # decimal comma locales
    sec=${t%%.*}
    f=${t#*.}
    [ "$f" = "$t" ] && f=0
    f=${f}000
    f=${f%"${f#???}"}
    ms=$((1$f - 1000))
}

if [ -n "${EPOCHREALTIME:-}" ]; then clock=realtime; else clock=uptime; fi
case $dur in ''|*[!0-9]*) echo "fuelgauge.sh: DURATION_S must be whole seconds: $dur" >&2; exit 2 ;; esac
if [ "$dur" = 0 ] && [ -z "$stop" ]; then echo "fuelgauge.sh: duration 0 needs a STOPFILE" >&2; exit 2; fi

echo "# autlearn-fuelgauge 1 clock=$clock interval=$interval duration=$dur"
now
start_sec=$sec start_ms=$ms
sample() {  # one S line at time t
    rd cur "$PS/battery/current_now"
    rd volt "$PS/battery/voltage_now"
    rd cc "$PS/battery/charge_counter"
    rd st "$PS/battery/status"
    rd usb "$PS/usb/online"
    rd ac "$PS/ac/online"
    echo "S $t $cur $volt $cc $usb $ac $st"
    n=$((n + 1))
}
n=0
reason=duration
while :; do
    now
    # stopped: one last sample, so the trace reaches the moment the stop was asked for (after the last step,
    # even when this sampler was held meanwhile)
    if [ -n "$stop" ] && [ -e "$stop" ]; then reason=stopfile; sample; break; fi
    elapsed=$(( (sec - start_sec) * 1000 + ms - start_ms ))
    if [ "$dur" != 0 ] && [ "$elapsed" -ge $((dur * 1000)) ]; then break; fi
    sample
    sleep "$interval" 2>/dev/null || sleep 1
done
echo "# end reason=$reason samples=$n"
