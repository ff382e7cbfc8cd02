# AlphaCal: flag radio-frequency interference in a visibility dataset and calibrate it.
# At TACC the agent runs from its container image (Apptainer, GPU passed through with --nv);
# without an image it runs the same program with the job's Python.
set -euo pipefail
mkdir -p "$TACC_OUTPUT_DIR"
if [[ -n "${TACC_AGENT_IMAGE:-}" ]]; then
  module load tacc-apptainer 2>/dev/null || true
  launcher=(apptainer exec --nv --bind "$TACC_JOB_DIR" --bind "$TACC_DATASET_DIR" "$TACC_AGENT_IMAGE")
else
  launcher=()
fi
"${launcher[@]}" "$TACC_PYTHON" "$TACC_AGENT_HOME/alphacal.py" \
  --dataset "$TACC_DATASET_DIR" \
  --output "$TACC_OUTPUT_DIR" \
  --params "$TACC_PARAMS_FILE" \
  --progress "$TACC_PROGRESS_FILE"
