#!/usr/bin/env bash
# The one-command check for a machine with a CUDA GPU (issue 3), offline, in at most 8 minutes:
#   1. build the C++/CUDA extension in place (python setup.py build_ext --inplace),
#   2. run the whole test suite (pytest tests/) with the real Triton and CUDA kernels,
#   3. run the benchmark (python -m benchmarks) and print a summary.
# With $OUT set to a folder, the logs, the summary and benchmark.json are written there.
# Usage, from anywhere:  OUT=/some/folder bash benchmarks/gpu_check.sh
# Without a GPU it runs as a dry run (CPU build, tests with the Triton interpreter, --quick benchmark)
# so that the script itself can be checked anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python}
command -v "$python" >/dev/null || python=python3
out=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$out"
# Seconds per stage, and for the whole check (8 minutes with room for start-up and the summary);
# a stage never runs past the whole check's deadline.
build_limit=120 probe_limit=30 test_limit=150 benchmark_limit=170 total_limit=450

summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

# stage NAME LIMIT LOG COMMAND...: run with a time limit, log to a file, record status and seconds.
stage() {
    local name=$1 limit=$2 log=$3 begin status
    shift 3
    begin=$SECONDS
    limit=$(( limit < total_limit - SECONDS ? limit : total_limit - SECONDS ))
    if [ "$limit" -le 0 ]; then
        say "$name: NOT RUN (the check's ${total_limit} s are spent)"
        return 124
    fi
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    status=$?
    case $status in
        0) say "$name: ok in $((SECONDS - begin)) s (log: $log)" ;;
        124|137) say "$name: TIMED OUT after ${limit} s (log: $log)" ;;
        *) say "$name: FAILED (exit $status) in $((SECONDS - begin)) s (log: $log)" ;;
    esac
    return $status
}

if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    gpu=1
    unset TRITON_INTERPRET  # real kernels
    benchmark_mode=()
else
    gpu=0
    benchmark_mode=(--quick)
    # nvcc still compiles the CUDA sources here when it is installed: for the H200's architecture only.
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
fi
say "gpu_check $(date -u +%FT%TZ) on $(hostname): $("$python" - <<'EOF'
import platform, torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "absent"
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU: DRY RUN on the CPU"
print(f"Python {platform.python_version()}, torch {torch.__version__}, triton {triton_version}, {gpu}")
EOF
)"

failed=0
stage "build (setup.py build_ext --inplace)" "$build_limit" "$out/build.log" \
    env MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$python" setup.py build_ext --inplace || failed=1
probe_log=$(mktemp -t gpu_check_backends.XXXXXX)  # not in $OUT, which brings back 8 files at most
stage "backends" "$probe_limit" "$probe_log" "$python" -c 'import torch, lookaround_fused as lf
print({d: lf.available_backends(d) for d in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]})'
say "  $(tail -1 "$probe_log")"

stage "tests (pytest tests/)" "$test_limit" "$out/tests.log" "$python" -m pytest tests/ -q -rfEs -p no:cacheprovider \
    || failed=1
outcome=$(grep -E '(passed|failed|error)' "$out/tests.log" | tail -1)
say "  ${outcome:-$(tail -c 300 "$out/tests.log")}"
grep -E '^(FAILED|ERROR|SKIPPED)' "$out/tests.log" | head -20 | sed 's/^/  /' | tee -a "$summary"

stage "benchmark (python -m benchmarks ${benchmark_mode[*]})" "$benchmark_limit" "$out/benchmark.log" \
    "$python" -m benchmarks "${benchmark_mode[@]}" --out "$out" || failed=1
if [ -f "$out/benchmark.json" ]; then
    "$python" -m benchmarks --report "$out/benchmark.json" | tee -a "$summary"
fi

say "gpu_check: $([ $failed = 0 ] && echo PASSED || echo FAILED) in ${SECONDS} s; files in $out"
[ $gpu = 1 ] || say "(dry run without a GPU: the Triton and CUDA paths were not exercised)"
exit $failed
