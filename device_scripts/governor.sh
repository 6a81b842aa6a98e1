#!/system/bin/sh
# CPU frequency governor operations for autlearn. POSIX sh / mksh (Android) / toybox; no bashisms.
#
#   governor.sh available                      per policy: policy, cpus, governors, frequencies,
#                                              cpuinfo_min, cpuinfo_max
#   governor.sh read                           per policy: policy, governor, min, max, cur [, setspeed]
#   governor.sh apply POLICY GOV [MIN MAX]     set governor (and scaling limits, kHz); prints `read` of POLICY
#   governor.sh setspeed POLICY FREQ           write scaling_setspeed (userspace governor); prints `read` of POLICY
#   governor.sh pin (POLICY GOV MIN MAX SPEED)...
#                                              a frequency pin, every policy in one call: governor, limits, then
#                                              scaling_setspeed (SPEED kHz, or `-` for none); prints `read` of all
#   governor.sh restore SNAPSHOT_FILE          re-apply a saved `read` output (governor, min, max, setspeed)
#
# Output: `key=value` lines; every policy block starts with `policy=NAME`. POLICY is `policyN` (or `cpuN` on old
# kernels without cpufreq/policy* directories). Frequencies are kHz.
# Exit codes: 0 ok, 2 usage, 3 unknown policy / governor not offered, 4 write refused (not root / kernel said no).
SYSFS=${AUTLEARN_SYSFS:-/sys}
CPU=$SYSFS/devices/system/cpu

die() { code=$1; shift; echo "governor.sh: $*" >&2; exit "$code"; }

# Policy directories as "name dir" lines.
policies() {
    found=0
    for d in "$CPU"/cpufreq/policy*; do
        [ -d "$d" ] || continue
        found=1
        echo "${d##*/} $d"
    done
    [ "$found" = 1 ] && return 0
    for d in "$CPU"/cpu[0-9]*; do
        [ -d "$d/cpufreq" ] || continue
        n=${d##*/}
        rel=$(cat "$d/cpufreq/related_cpus" 2>/dev/null || cat "$d/cpufreq/affected_cpus" 2>/dev/null)
        first=${rel%%[ ,-]*}
        # one entry per frequency domain: the first CPU of related_cpus owns it
        [ -z "$first" ] || [ "cpu$first" = "$n" ] || continue
        echo "$n $d/cpufreq"
    done
}

policy_dir() {
    policies | while read -r name dir; do
        [ "$name" = "$1" ] && echo "$dir" && break
    done
}

val() { [ -r "$1" ] && { v=$(cat "$1" 2>/dev/null) && echo "$v"; }; }

print_available() {
    echo "policy=$1"
    echo "cpus=$(val "$2/related_cpus")"
    echo "governors=$(val "$2/scaling_available_governors")"
    echo "frequencies=$(val "$2/scaling_available_frequencies")"
    echo "cpuinfo_min=$(val "$2/cpuinfo_min_freq")"
    echo "cpuinfo_max=$(val "$2/cpuinfo_max_freq")"
}

print_read() {
    echo "policy=$1"
    echo "governor=$(val "$2/scaling_governor")"
    echo "min=$(val "$2/scaling_min_freq")"
    echo "max=$(val "$2/scaling_max_freq")"
    echo "cur=$(val "$2/scaling_cur_freq")"
    if [ -e "$2/scaling_setspeed" ]; then
        echo "setspeed=$(val "$2/scaling_setspeed")"
    fi
}

write() {  # write FILE VALUE
    [ -e "$1" ] || die 3 "no such file: $1"
    { echo "$2" > "$1"; } 2>/dev/null || die 4 "cannot write '$2' to $1 (root required?)"
}

# Set limits without ever having min > max in between: lower min first, then max, then min.
set_limits() {  # set_limits DIR MIN MAX
    case "$2$3" in *[!0-9]*) die 2 "limits must be integers in kHz: '$2' '$3'" ;; esac
    [ "$2" -le "$3" ] || die 2 "min $2 > max $3"
    lo=$(val "$1/cpuinfo_min_freq")
    [ -n "$lo" ] && write "$1/scaling_min_freq" "$lo"
    write "$1/scaling_max_freq" "$3"
    write "$1/scaling_min_freq" "$2"
}

set_governor() {  # set_governor DIR GOV
    case " $(val "$1/scaling_available_governors") " in
        *" $2 "*) ;;
        *) die 3 "governor '$2' not offered by ${1} (offered: $(val "$1/scaling_available_governors"))" ;;
    esac
    write "$1/scaling_governor" "$2"
}

restore() {  # restore FILE
    [ -r "$1" ] || die 2 "cannot read snapshot $1"
    status=0
    # Blocks are flushed when the next `policy=` line (or the end) arrives.
    { cat "$1"; echo; echo "policy="; } | {  # the echo ends a last line that has no newline
        pol=""; gov=""; mn=""; mx=""; sp=""
        while IFS= read -r line; do
            key=${line%%=*}; value=${line#*=}
            case "$key" in
                policy)
                    if [ -n "$pol" ]; then
                        dir=$(policy_dir "$pol")
                        if [ -z "$dir" ]; then
                            echo "governor.sh: snapshot policy $pol not found" >&2; status=3
                        else
                            ( [ -n "$gov" ] && set_governor "$dir" "$gov"
                              [ -n "$mn" ] && [ -n "$mx" ] && set_limits "$dir" "$mn" "$mx"
                              if [ -n "$sp" ] && [ -e "$dir/scaling_setspeed" ] &&
                                 [ "$(val "$dir/scaling_setspeed")" != "$sp" ]; then
                                  case "$sp" in
                                      *[!0-9]*)  # "<unsupported>": kernels show it by themselves and refuse the
                                                 # write; plain-file sysfs (virtual phones) needs it written back
                                          { echo "$sp" > "$dir/scaling_setspeed"; } 2>/dev/null ;;
                                      *) write "$dir/scaling_setspeed" "$sp" ;;
                                  esac
                              fi
                              exit 0 ) || status=$?
                        fi
                    fi
                    pol=$value; gov=""; mn=""; mx=""; sp="" ;;
                governor) gov=$value ;;
                min) mn=$value ;;
                max) mx=$value ;;
                setspeed) sp=$value ;;
            esac
        done
        exit "$status"
    }
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    available)
        policies | while read -r name dir; do print_available "$name" "$dir"; done ;;
    read)
        policies | while read -r name dir; do print_read "$name" "$dir"; done ;;
    apply)
        [ $# -eq 2 ] || [ $# -eq 4 ] || die 2 "usage: apply POLICY GOV [MIN MAX]"
        dir=$(policy_dir "$1"); [ -n "$dir" ] || die 3 "unknown policy '$1'"
        set_governor "$dir" "$2"
        [ $# -eq 4 ] && set_limits "$dir" "$3" "$4"
        print_read "$1" "$dir" ;;
    apply-all)  # POLICY GOV MIN MAX, repeated: every policy in one call, then the state of all of them
        [ $# -gt 0 ] && [ $(($# % 4)) -eq 0 ] || die 2 "usage: apply-all POLICY GOV MIN MAX [POLICY GOV MIN MAX ...]"
        while [ $# -gt 0 ]; do
            dir=$(policy_dir "$1"); [ -n "$dir" ] || die 3 "unknown policy '$1'"
            set_governor "$dir" "$2"
            set_limits "$dir" "$3" "$4"
            shift 4
        done
        policies | while read -r name dir; do print_read "$name" "$dir"; done ;;
    pin)  # POLICY GOV MIN MAX SPEED, repeated (profiler/governor.py: PinPlan.script_args)
        [ $# -gt 0 ] && [ $(($# % 5)) -eq 0 ] || die 2 "usage: pin POLICY GOV MIN MAX SPEED [...]"
        while [ $# -gt 0 ]; do
            dir=$(policy_dir "$1"); [ -n "$dir" ] || die 3 "unknown policy '$1'"
            case "$5" in -) ;; ''|*[!0-9]*) die 2 "frequency must be an integer in kHz or '-': '$5'" ;; esac
            set_governor "$dir" "$2"
            set_limits "$dir" "$3" "$4"
            [ "$5" = "-" ] || write "$dir/scaling_setspeed" "$5"
            shift 5
        done
        policies | while read -r name dir; do print_read "$name" "$dir"; done ;;
    setspeed)
        [ $# -eq 2 ] || die 2 "usage: setspeed POLICY FREQ"
        dir=$(policy_dir "$1"); [ -n "$dir" ] || die 3 "unknown policy '$1'"
        case "$2" in ''|*[!0-9]*) die 2 "frequency must be an integer in kHz: '$2'" ;; esac
        write "$dir/scaling_setspeed" "$2"
        print_read "$1" "$dir" ;;
    restore)
        [ $# -eq 1 ] || die 2 "usage: restore SNAPSHOT_FILE"
        restore "$1" ;;
    *) die 2 "usage: governor.sh available|read|apply POLICY GOV [MIN MAX]|apply-all (POLICY GOV MIN MAX)...|setspeed POLICY FREQ|pin (POLICY GOV MIN MAX SPEED)...|restore FILE" ;;
esac
