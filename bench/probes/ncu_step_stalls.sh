# Probe: why a decode step's kernels take longer than their work (bench/NOTES.md 66e: at ctx 32 the
# attention's phases take 0.5-1.4 us each for 32 tokens). Nsight Compute on one launch each of the
# decode attention, the RMSNorm and gate|up's and down's GEMVs inside the served decode step (decode_timeline.py),
# caches left as the step leaves them (--cache-control none), with every stall reason, the constant
# cache (kernel parameters: imc_miss) and instruction fetch (no_instruction) among them.
# Run on the GPU machine from the repo root: bash bench/probes/ncu_step_stalls.sh; $OUT gets the reports.
S=smsp__average_warps_issue_stalled
R=per_issue_active.ratio
M=$(for r in long_scoreboard short_scoreboard wait barrier membar mio_throttle lg_throttle math_pipe_throttle \
  not_selected selected dispatch_stall no_instruction imc_miss branch_resolving drain sleeping tex_throttle; do
  printf "%s_%s_%s," $S $r $R; done)gpu__time_duration.sum,smsp__inst_executed.sum,sm__cycles_elapsed.avg
# Kernels by their mangled names (--kernel-name-base mangled): the demangled form of a template
# instance is ncu's own spelling, and the demangled GEMV pattern gave no report within 100 s, as if
# it matched nothing and the whole probe ran under ncu (NOTES 75).
# gate|up: quant_gemv_tc_kernel<__half, 1, 4, 4, true>; down: the same with false.
for ctx in 32 2048; do
  for k in decode_attention_kernel rms_norm_kernel quant_gemv_tc_kernelI6__halfLi1ELi4ELi4ELb1E \
    quant_gemv_tc_kernelI6__halfLi1ELi4ELi4ELb0E; do
    name=$(echo "$k" | tr -dc 'a-zA-Z0-9_')  # whole: gate|up's and down's differ only at the end
    timeout 300 ncu --cache-control none --kernel-name-base mangled --kernel-name "regex:$k" --launch-skip 40 \
      --launch-count 1 --metrics "$M" python3 bench/probes/decode_timeline.py --ctx $ctx --steps 2 \
      > "$OUT/ncu_${name}_$ctx.txt" 2>&1
    echo "== $k at ctx $ctx"
    grep -E "stalled|inst_executed|duration|cycles_elapsed" "$OUT/ncu_${name}_$ctx.txt" | awk '$NF+0 > 0.05 {print $1, $NF}' \
      | sed "s/${S}_//; s/_${R}//"
  done
done
