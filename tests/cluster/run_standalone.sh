#!/usr/bin/env bash
# Standalone-cluster test: the whole pipeline spark-submitted to a real Spark standalone master and
# worker on loopback, with the package shipped as a wheel, the `cluster` profile and the delta-spark
# jars of jars/lib/ (--jars). Code that only works in local mode (driver
# and executors in one JVM) fails here.
#
#   tests/cluster/run_standalone.sh            # uses $PYTHON, else .venv/bin/python, else python3
#   CDP_CLUSTER_CUSTOMERS=500 CDP_CLUSTER_DIR=/tmp/cdp-ci CDP_CLUSTER_RUN_ARGS="--to land" tests/cluster/run_standalone.sh
#
# CDP_CLUSTER_DIR: work folder (lake/, raw/, logs/, the wheel), kept afterwards; it must not hold a lake
# yet. Without it a temporary folder is used and removed (unless CDP_CLUSTER_KEEP=1).
# pytest runs this script (tests/cluster/test_standalone.py, marker `cluster`) and the notebooks then
# reuse the lake it built (tests/test_notebooks.py).
#
# Starts master + one worker from the scripts inside the installed pyspark (pip's pyspark ships
# sbin/spark-daemon.sh but not start-master.sh), always stops them (trap), exits non-zero when the
# run fails or the published audiences are empty.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY=$REPO/.venv/bin/python; else PY=$(command -v python3); fi
fi
# Enough persons for every model's training population and for members in the published audiences
# (and in the notebooks' demo audience); the run's cost is mostly fixed (planning, JIT), not per row.
CUSTOMERS=${CDP_CLUSTER_CUSTOMERS:-500}
SPARK_HOME=$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
# The `cluster` profile runs on delta-spark: its jars come from jars/lib/ (`cdp jars fetch`), given to
# spark-submit with --jars as a user deploys them; nothing is downloaded at job start.
JARS=$(ls "$REPO"/jars/lib/*.jar 2>/dev/null | paste -sd, -)
if [[ -z "$JARS" ]]; then
  echo "no jars in $REPO/jars/lib: run \`cdp jars fetch\` (mvn -q -B -f jars/pom.xml dependency:copy-dependencies)" >&2
  exit 2
fi
if [[ -n "${CDP_CLUSTER_DIR:-}" ]]; then
  mkdir -p "$CDP_CLUSTER_DIR"
  WORK=$(cd "$CDP_CLUSTER_DIR" && pwd)  # absolute: driver and executors both see it
  KEEP=1
  if [[ -e "$WORK/lake" ]]; then echo "$WORK/lake exists; CDP_CLUSTER_DIR must be a fresh folder" >&2; exit 2; fi
else
  WORK=$(mktemp -d /tmp/cdp-cluster.XXXXXX)
  KEEP=${CDP_CLUSTER_KEEP:-}
fi
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
MASTER_PORT=$(free_port); MASTER_UI=$(free_port); WORKER_UI=$(free_port)
MASTER=spark://127.0.0.1:$MASTER_PORT

export SPARK_HOME SPARK_LOCAL_IP=127.0.0.1 SPARK_MASTER_HOST=127.0.0.1
export SPARK_LOG_DIR=$WORK/logs SPARK_PID_DIR=$WORK/pids SPARK_WORKER_DIR=$WORK/worker SPARK_IDENT_STRING=cdp-ci
export PYSPARK_PYTHON=$PY PYSPARK_DRIVER_PYTHON=$PY
export MLFLOW_DISABLE_TELEMETRY=true MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false GX_ANALYTICS_ENABLED=false
unset MLFLOW_TRACKING_URI MLFLOW_REGISTRY_URI  # the run keeps its models in the lake's SQLite store
DAEMON=$SPARK_HOME/sbin/spark-daemon.sh
chmod +x "$SPARK_HOME"/sbin/*.sh "$SPARK_HOME"/bin/* 2>/dev/null || true

stop_cluster() {
  local status=$?
  trap - EXIT INT TERM
  "$DAEMON" stop org.apache.spark.deploy.worker.Worker 1 >/dev/null 2>&1 || true
  "$DAEMON" stop org.apache.spark.deploy.master.Master 1 >/dev/null 2>&1 || true
  if [[ $status -ne 0 ]]; then
    echo "cluster test FAILED (exit $status); daemon and executor logs:" >&2
    tail -n 30 "$SPARK_LOG_DIR"/*.out >&2 2>/dev/null || true
    grep -h -E "ERROR|Exception" "$SPARK_WORKER_DIR"/*/*/stderr 2>/dev/null | head -n 20 >&2 || true
  fi
  if [[ -z "$KEEP" ]]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi
  exit $status
}
trap stop_cluster EXIT
trap 'exit 143' INT TERM  # -> EXIT trap: the daemons are stopped whatever ends the script

wait_for_log() {  # wait_for_log FILE_GLOB PATTERN WHAT
  for _ in $(seq 1 120); do
    if grep -q "$2" $1 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "timed out waiting for $3" >&2
  return 1
}

SECONDS=0
echo "== building the wheel"
rm -rf "$WORK/dist"
"$PY" -m pip wheel -q --no-deps -w "$WORK/dist" . >/dev/null
WHEEL=$(ls "$WORK"/dist/*.whl)
echo "   $WHEEL (${SECONDS} s)"

echo "== starting master $MASTER and one worker (2 cores, 2g)"
"$DAEMON" start org.apache.spark.deploy.master.Master 1 --host 127.0.0.1 --port "$MASTER_PORT" \
  --webui-port "$MASTER_UI" >/dev/null
wait_for_log "$SPARK_LOG_DIR/*Master*.out" "I have been elected leader" "the master"
"$DAEMON" start org.apache.spark.deploy.worker.Worker 1 --host 127.0.0.1 --cores 2 --memory 2g \
  --webui-port "$WORKER_UI" "$MASTER" >/dev/null
wait_for_log "$SPARK_LOG_DIR/*Worker*.out" "Successfully registered with master" "the worker to register"
echo "   up (${SECONDS} s)"

echo "== spark-submit src/cdp/jobs/run.py: $CUSTOMERS generated customers, lake $WORK/lake"
# The wheel goes first on the driver's and executors' sys.path. --conf names the config folder the
# driver reads (it must be a real folder; cdp.jobs.conf inside the wheel is a zip entry).
# --driver-memory 4g: the plans of `tag` and its gates (hundreds of tag columns) take more than 2g of
# driver heap while they are analysed (OutOfMemoryError with 2g at 1000 customers).
# spark.storage.blockManagerHeartbeatTimeoutMs: Spark 4.2's executor heartbeat thread can die on a race
# with a cached DataFrame's accumulator (NullPointerException in PartitionKeyedAccumulator.isZero,
# SPARK-59451, unfixed in 4.2.0); the driver then removes the executor after spark.network.timeout
# (120 s), losing its cached blocks and minutes of CI time. Executors that really die are still
# noticed at once through the worker; only a silent heartbeat waits this long.
# spark.databricks.delta.snapshotPartitions: delta-spark rebuilds a table's state from its log in 50
# tasks by default; this lake's tables are tiny, so 2 do (a cluster with big tables keeps the default).
"$SPARK_HOME/bin/spark-submit" --master "$MASTER" --deploy-mode client --name cdp-ci-cluster \
  --py-files "$WHEEL" --jars "$JARS" --driver-memory 4g \
  --conf spark.executor.memory=1500m --conf spark.executor.cores=2 --conf spark.cores.max=2 \
  --conf spark.pyspark.python="$PY" --conf spark.pyspark.driver.python="$PY" \
  --conf spark.driver.host=127.0.0.1 --conf spark.ui.enabled=false --conf spark.log.level=WARN \
  --conf spark.storage.blockManagerHeartbeatTimeoutMs=1800000 \
  --conf spark.databricks.delta.snapshotPartitions=2 \
  src/cdp/jobs/run.py --conf "$REPO/conf" --profile cluster --lake "$WORK/lake" --raw "$WORK/raw" --customers "$CUSTOMERS" --seed 7 ${CDP_CLUSTER_RUN_ARGS:-}
echo "   pipeline done (${SECONDS} s)"

echo "== checking the published audiences through the lake (written by delta-spark)"
"$PY" tests/cluster/check_published.py "$WORK/lake" --written-by delta-spark
echo "cluster test passed in ${SECONDS} s"
