#!/system/bin/sh
# Probe a phone: print `key=value` lines that profiler/probe.py parses. POSIX sh / mksh / toybox only.
# Missing nodes are simply not printed. SYSFS is overridden only on virtual phones.
# `probe.sh dynamic` prints only what changes during a run (frequencies, temperatures, battery).
# `probe.sh telemetry` (before and after every runner launch: profiler/telemetry.py) prints the policies with their
# cumulative stats/time_in_state, the thermal zones and the cooling devices: no props, no battery.
SYSFS=${AUTLEARN_SYSFS:-/sys}
MODE=${1:-full}
STATIC=1
case $MODE in dynamic|telemetry) STATIC= ;; esac

kv() { printf '%s=%s\n' "$1" "$2"; }
# One sysfs node as one line, lines joined by spaces, trailing spaces cut. Shell builtins only: a probe runs
# before and after every cell, and a fork per node made it cost ~0.3 s.
node() {
    [ -r "$2" ] || return 0
    _v= _l=
    { while IFS= read -r _l || [ -n "$_l" ]; do _v="${_v:+$_v }$_l"; done; } < "$2" 2>/dev/null || return 0
    _v=${_v%"${_v##*[! ]}"}
    kv "$1" "$_v"
}

echo "probe.version=1"
[ -z "$STATIC" ] || for p in ro.product.model ro.product.manufacturer ro.product.brand ro.product.device ro.product.name \
         ro.product.cpu.abi ro.product.cpu.abilist ro.build.version.release ro.build.version.sdk \
         ro.build.type ro.build.fingerprint ro.soc.manufacturer ro.soc.model ro.board.platform ro.hardware \
         ro.debuggable ro.autlearn.virtual; do
    v=$(getprop "$p" 2>/dev/null)
    [ -n "$v" ] && kv "prop.$p" "$v"
done
if [ -n "$STATIC" ]; then
    kv kernel "$(uname -r 2>/dev/null)"
    kv machine "$(uname -m 2>/dev/null)"
    kv uid "$(id -u 2>/dev/null)"
    kv su "$(command -v su 2>/dev/null)"
    # /proc/cpuinfo lines the CPU-target parser needs (profiler/cputarget.py), numbered: cpuinfo.<n>=<line>.
    # x86 flags are identical per core and long: only the first is kept.
    if [ -r /proc/cpuinfo ]; then
        n=0 flags=
        while IFS= read -r line; do
            case $line in
                flags*) [ -n "$flags" ] && continue; flags=1 ;;
                processor*|vendor_id*|"cpu family"*|model*|"CPU implementer"*|"CPU part"*|Features*|Hardware*) ;;
                *) continue ;;
            esac
            kv "cpuinfo.$n" "$line"
            n=$((n + 1))
        done < /proc/cpuinfo
    fi
fi
if [ -r /proc/uptime ]; then read -r _up _ < /proc/uptime && kv uptime "$_up"; fi
node cpu.possible "$SYSFS/devices/system/cpu/possible"
node cpu.online "$SYSFS/devices/system/cpu/online"

policy() {
    for f in related_cpus affected_cpus scaling_available_governors scaling_governor \
             scaling_available_frequencies scaling_min_freq scaling_max_freq scaling_cur_freq \
             cpuinfo_min_freq cpuinfo_max_freq; do
        node "policy.$1.$f" "$2/$f"
    done
    if [ "$MODE" = telemetry ]; then node "policy.$1.time_in_state" "$2/stats/time_in_state"; fi
}
found=
for d in "$SYSFS"/devices/system/cpu/cpufreq/policy*; do
    [ -d "$d" ] || continue
    found=1
    policy "${d##*/}" "$d"
done
# Old kernels: no policyN, a cpufreq directory per CPU (often links to one per domain). One entry per frequency
# domain: the first CPU of related_cpus (else affected_cpus) owns it; without either list, every CPU is listed.
if [ -z "$found" ]; then
    for d in "$SYSFS"/devices/system/cpu/cpu[0-9]*; do
        [ -d "$d/cpufreq" ] || continue
        n=${d##*/}
        rel=
        { IFS= read -r rel < "$d/cpufreq/related_cpus"; } 2>/dev/null || { IFS= read -r rel < "$d/cpufreq/affected_cpus"; } 2>/dev/null
        rel=${rel%%[ ,-]*}
        [ -z "$rel" ] || [ "cpu$rel" = "$n" ] || continue
        policy "$n" "$d/cpufreq"
    done
fi
# EAS capacity per CPU (0-1024): tells clusters apart where cpufreq does not.
[ -z "$STATIC" ] || for d in "$SYSFS"/devices/system/cpu/cpu[0-9]*; do
    node "cpu.${d##*/cpu}.capacity" "$d/cpu_capacity"
done

for d in "$SYSFS"/class/thermal/thermal_zone*; do
    [ -d "$d" ] || continue
    node "thermal.${d##*/}.type" "$d/type"
    node "thermal.${d##*/}.temp" "$d/temp"
done
for d in "$SYSFS"/class/thermal/cooling_device*; do
    [ -d "$d" ] || continue
    node "cooling.${d##*/}.type" "$d/type"
    node "cooling.${d##*/}.cur_state" "$d/cur_state"
    node "cooling.${d##*/}.max_state" "$d/max_state"
done

[ "$MODE" = telemetry ] || for d in "$SYSFS"/class/power_supply/*; do
    [ -d "$d" ] || continue
    n=${d##*/}
    for f in type status online capacity current_now voltage_now charge_counter temp input_suspend \
             charging_enabled; do
        node "power.$n.$f" "$d/$f"
    done
done
echo "probe.end=1"
